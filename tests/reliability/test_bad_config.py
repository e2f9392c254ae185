"""Configuration that would break later is refused when it loads: one message, exit code 2.

Each class of bad input from the hardening issue has one test here, parametrised over the bad
values: durations that overflowed (``1e20``, ``inf``, ``99999999999d``) or made no sense
(negative leases, a zero link age), numbers without a range, settings that contradict each other,
malformed or plain-http URLs, redirect allow-list tricks, a ``.env`` that is not UTF-8, and weak
webhook secrets. A few of each go through the real ``python -m worker status`` process, so what
is checked is what an operator sees. Unknown ``REAUTH_`` variables (typos) load, with a warning
that names the closest real setting.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e.e2e_helpers import ROOT
from worker.config import NEXUS_SESSION_LIFETIME, load_settings, redirect_allowed
from worker.errors import ConfigError

pytestmark = [pytest.mark.reliability]

DURATIONS = [
    "REAUTH_MX_SESSION_MARGIN",
    "REAUTH_ABANDON_AFTER",
    "REAUTH_AGGREGATION_FRESHNESS",
    "REAUTH_BACKOFF_BASE",
    "REAUTH_BACKOFF_CAP",
    "REAUTH_SCAN_INTERVAL",
    "REAUTH_CLAIM_LEASE",
    "REAUTH_NOTIFY_LEASE",
    "REAUTH_LINK_MAX_AGE",
    "REAUTH_REMINDER_SCHEDULE",
]
WHSEC_32 = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WEBHOOK = {
    "REAUTH_NOTIFY_SINK": "webhook",
    "REAUTH_WEBHOOK_URL": "https://hooks.example.com/reauth",
    "REAUTH_WEBHOOK_SECRET": WHSEC_32,
}


def _refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    """Set ``env``, load the settings, and return the ConfigError's message."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


# --- durations and numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e20", "inf", "-inf", "nan", "99999999999d", "1e300s", "1e15"])
@pytest.mark.parametrize("env", DURATIONS)
def test_huge_or_non_finite_durations_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    """These raised OverflowError tracebacks (also inside the reminder schedule); now each is a
    ConfigError naming the variable."""
    if env == "REAUTH_REMINDER_SCHEDULE":
        value = f"0,{value}"
    message = _refused(monkeypatch, {env: value})
    assert env in message
    assert "finite" in message or "between" in message, message


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REAUTH_CLAIM_LEASE", "-5m"),  # let a rerun take members a running scan held
        ("REAUTH_CLAIM_LEASE", "0"),
        ("REAUTH_NOTIFY_LEASE", "-1"),
        ("REAUTH_NOTIFY_LEASE", "0s"),
        ("REAUTH_LINK_MAX_AGE", "-1"),  # nothing would ever be delivered
        ("REAUTH_LINK_MAX_AGE", "0"),
        ("REAUTH_SCAN_INTERVAL", "0"),
        ("REAUTH_BACKOFF_BASE", "-30s"),
        ("REAUTH_BACKOFF_CAP", "0"),
        ("REAUTH_ABANDON_AFTER", "-PT5M"),
        ("REAUTH_AGGREGATION_FRESHNESS", "-1h"),
        ("REAUTH_MX_SESSION_MARGIN", "-1m"),
        ("REAUTH_REMINDER_SCHEDULE", "-1h,24h"),
        ("REAUTH_REMINDER_SCHEDULE", "0,24h,24h"),  # two reminders at once
    ],
)
def test_negative_or_zero_durations_and_leases_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    """Each duration has a lower bound (zero only where zero means something)."""
    assert env in _refused(monkeypatch, {env: value})


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REAUTH_MX_RATE_LIMIT_PER_SECOND", "inf"),
        ("REAUTH_MX_RATE_LIMIT_PER_SECOND", "1e-300"),
        ("REAUTH_MX_TIMEOUT", "nan"),
        ("REAUTH_MX_TIMEOUT", "0.0001"),
        ("REAUTH_WEBHOOK_TIMEOUT", "inf"),
        ("REAUTH_WEBHOOK_TIMEOUT", "nan"),
        ("REAUTH_MX_MAX_BODY_BYTES", "99999999999"),
        ("REAUTH_NOTIFY_MAX_ATTEMPTS", "1000000000"),
        ("REAUTH_NOTIFY_BATCH_SIZE", "10000000"),
        ("REAUTH_NOTIFY_STREAM_MAXLEN", "99999999999999"),
        ("REAUTH_TASK_TIME_LIMIT", "999999999"),
        ("REAUTH_VISIBILITY_TIMEOUT", "99999999999"),
        ("REAUTH_METRICS_PORT", "0"),
        ("REAUTH_LINK_MAX_AGE", "400d"),
        ("REAUTH_BACKOFF_BASE", "2d"),  # backoff doubles it 32 times: timedelta overflow
    ],
)
def test_numbers_out_of_range_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    """Every number has a finite range; none is left open at the top."""
    assert env in _refused(monkeypatch, {env: value})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"REAUTH_MX_SESSION_MARGIN": "31m"}, ["REAUTH_MX_SESSION_MARGIN", "30 minutes"]),
        ({"REAUTH_MX_SESSION_MARGIN": "30m"}, ["REAUTH_MX_SESSION_MARGIN", "30 minutes"]),
        (
            {"REAUTH_CLAIM_LEASE": "20s", "REAUTH_CLAIM_HEARTBEAT": "10s"},
            ["REAUTH_CLAIM_LEASE", "REAUTH_CLAIM_HEARTBEAT"],
        ),
        (
            {"REAUTH_BACKOFF_BASE": "30m", "REAUTH_BACKOFF_CAP": "10m"},
            ["REAUTH_BACKOFF_BASE", "REAUTH_BACKOFF_CAP"],
        ),
        (
            {
                "REAUTH_MX_TIMEOUT": "120",
                "REAUTH_TASK_TIME_LIMIT": "90",
                "REAUTH_CLAIM_LEASE": "1h",
            },
            ["REAUTH_MX_TIMEOUT", "REAUTH_TASK_TIME_LIMIT"],
        ),
        (
            {"REAUTH_NOTIFY_LEASE": "15s", "REAUTH_CLAIM_HEARTBEAT": "10s"},
            ["REAUTH_NOTIFY_LEASE", "REAUTH_CLAIM_HEARTBEAT"],
        ),
        (
            {"REAUTH_TASK_TIME_LIMIT": "900"},
            ["REAUTH_TASK_TIME_LIMIT", "REAUTH_VISIBILITY_TIMEOUT"],
        ),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: list[str]
) -> None:
    """Relations: margin below the Nexus session lifetime (31m passed ``reauth status`` and then
    failed the first scan with a traceback); a claim lease of at least three MX timeouts; the
    backoff base within its cap; an MX call shorter than the task limit; with the webhook sink, a
    relay lease of at least three webhook deadlines."""
    message = _refused(monkeypatch, env)
    for name in names:
        assert name in message, message


def test_the_session_lifetime_in_config_is_the_one_the_mx_client_uses() -> None:
    """config.py keeps its own copy of the 30-minute lifetime (it must not import worker.mx)."""
    from worker.mx.sessions import NEXUS_SESSION_TTL

    assert NEXUS_SESSION_LIFETIME == NEXUS_SESSION_TTL


def test_the_defaults_and_the_test_settings_still_load() -> None:
    """The bounds leave the defaults and the short leases of the reliability tests valid."""
    load_settings()
    load_settings(
        claim_lease=timedelta(seconds=3),
        notify_lease=timedelta(seconds=3),
        claim_heartbeat=timedelta(seconds=1),
        mx_timeout=1,
        task_time_limit=25,
        visibility_timeout=30,
        scan_interval=timedelta(seconds=1),
        backoff_base=timedelta(seconds=1),
        backoff_cap=timedelta(seconds=2),
    )


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REAUTH_WEBHOOK_URL", "nonsense"),
        ("REAUTH_WEBHOOK_URL", "https://"),
        ("REAUTH_WEBHOOK_URL", "ftp://hooks.example.com/x"),
        ("REAUTH_WEBHOOK_URL", "https://hooks.example.com:99999/x"),
        ("REAUTH_WEBHOOK_URL", "https://hooks.example.com/a b"),
        ("REAUTH_BROKER_URL", "http://localhost:6379/0"),
        ("REAUTH_BROKER_URL", "nonsense"),
        ("REAUTH_BROKER_URL", "redis://localhost:port/0"),
        ("REAUTH_REDIS_URL", "redis://localhost:70000/0"),
        ("REAUTH_REDIS_URL", "redis://localhost:6379/zero"),
        ("REAUTH_REDIS_URL", "redis://"),
        ("REAUTH_MX_BASE_URL", "https://"),
        ("REAUTH_MX_BASE_URL", "https:///nexus"),
        ("REAUTH_MX_BASE_URL", "https://mx.example.com:0"),
        ("REAUTH_MX_BASE_URL", "https://mx.example.com:abc"),
        ("REAUTH_MX_BASE_URL", "https://bad host.example.com"),
        ("REAUTH_MX_BASE_URL", "https://user:password@mx.example.com"),
        ("REAUTH_MX_SSO_BASE_URL", "https://sso.example.com/?x=1"),
        ("REAUTH_MX_SSO_BASE_URL", "https://[::1"),
    ],
)
def test_malformed_urls_are_refused(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """A URL must have the right scheme, name a host and, if it has a port, a valid one."""
    message = _refused(monkeypatch, {env: value})
    assert env in message
    assert "password" not in message


@pytest.mark.parametrize(
    "env",
    [
        {"REAUTH_WEBHOOK_URL": "http://hooks.example.com/reauth"},
        {"REAUTH_MX_BASE_URL": "http://127.0.0.1:8099"},
        {"REAUTH_MX_SSO_BASE_URL": "http://localhost:8099/sso"},
        {"REAUTH_ALLOWED_REDIRECT_PREFIXES": "http://app.example.com/"},
        {
            "REAUTH_ALLOWED_REDIRECT_PREFIXES": "http://app.example.com/",
            "REAUTH_APP_REDIRECT_URL": "http://app.example.com/cb",
        },
    ],
)
def test_plain_http_needs_allow_insecure_urls(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """http (not https) for the webhook, MX and redirect URLs only with the flag, loopback
    included; with ``REAUTH_ALLOW_INSECURE_URLS=true`` the same settings load."""
    message = _refused(monkeypatch, env)
    assert next(iter(env)) in message
    assert "REAUTH_ALLOW_INSECURE_URLS" in message
    monkeypatch.setenv("REAUTH_ALLOW_INSECURE_URLS", "true")
    load_settings()


# --- the redirect allow-list -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "url"),
    [
        ("https://", "https://evil.example.net/cb"),
        ("https:", "https://evil.example.net/cb"),
        ("https:///cb", "https://evil.example.net/cb"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/../../admin"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/%2e%2e/admin"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/.%2E/.%2e/admin"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/..%2fadmin"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/\\..\\admin"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/\r\nSet-Cookie: a=b"),
        ("https://app.example.com/cb/", "https://app.example.com/cb/\n"),
        ("https://app.example.com/", "https://app.example.com:8443/cb"),
        ("https://app.example.com/", "https://x@app.example.com/cb"),
        ("https://app.example.com/", "javascript://app.example.com/%0aalert(1)"),
    ],
)
def test_redirect_allow_list_tricks_are_refused(
    monkeypatch: pytest.MonkeyPatch, prefix: str, url: str
) -> None:
    """A scheme-only prefix allowed any host, ``/cb/../../admin`` passed the path prefix ``/cb/``
    and CR/LF was accepted in the redirect URL. Prefixes must name a host; paths are normalised
    (``..``, ``%2e%2e``) before matching; control characters and backslashes are refused."""
    assert not redirect_allowed(url, [prefix])
    message = _refused(
        monkeypatch,
        {"REAUTH_ALLOWED_REDIRECT_PREFIXES": prefix, "REAUTH_APP_REDIRECT_URL": url},
    )
    assert "REAUTH_ALLOWED_REDIRECT_PREFIXES" in message or "REAUTH_APP_REDIRECT_URL" in message


@pytest.mark.parametrize(
    ("prefix", "url"),
    [
        ("https://app.example.com/cb/", "https://app.example.com/cb/./done"),
        ("https://app.example.com/cb/", "https://APP.example.com:443/cb/done?state=1"),
        ("https://app.example.com", "https://app.example.com/cb/x/../done"),
        ("exampleapp://", "exampleapp://oauth_complete?status=success"),
    ],
)
def test_normalised_redirects_under_a_prefix_are_allowed(prefix: str, url: str) -> None:
    """Normalising does not refuse what is really under the prefix: dot segments that stay
    inside it, host case, the default port; a custom app scheme routes only to the app."""
    assert redirect_allowed(url, [prefix])
    load_settings(app_redirect_url=url, allowed_redirect_prefixes=[prefix])


# --- the environment and the .env file ---------------------------------------------------------


def test_env_file_that_is_not_utf8_is_one_message(tmp_path: Path) -> None:
    """A .env with non-UTF-8 bytes was a UnicodeDecodeError traceback; now it names the file
    and the line, without echoing the content."""
    (tmp_path / ".env").write_bytes(b"REAUTH_LOG_LEVEL=INFO\nREAUTH_MX_CLIENT_ID=caf\xe9-s3cret\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert ".env" in message
    assert "UTF-8" in message
    assert "line 2" in message
    assert "s3cret" not in message


def test_environment_value_that_is_not_utf8_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undecodable bytes in a variable arrive as surrogates; they are refused, not sent to MX."""
    monkeypatch.setenv("REAUTH_MX_CLIENT_ID", "client-\udcff")
    assert "REAUTH_MX_CLIENT_ID" in _refused(monkeypatch, {})


@pytest.mark.parametrize(
    ("source", "name", "suggestion"),
    [
        ("env", "REAUTH_MX_APIKEY", "REAUTH_MX_API_KEY"),
        ("env", "REAUTH_CLAIM_LEASES", "REAUTH_CLAIM_LEASE"),
        ("env", "reauth_webhok_url", "REAUTH_WEBHOOK_URL"),
        (".env", "REAUTH_NOTIFY_SNK", "REAUTH_NOTIFY_SINK"),
    ],
)
def test_unknown_variable_is_a_warning_naming_the_closest_setting(  # noqa: PLR0917
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    source: str,
    name: str,
    suggestion: str,
) -> None:
    """A typo loads (the setting keeps its default) but logs one warning that names the variable
    and the closest real setting, never the value. A log line, not a Python warning."""
    if source == "env":
        monkeypatch.setenv(name, "value-that-is-secret")
    else:
        (tmp_path / ".env").write_text(f"{name}=value-that-is-secret\n")
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        load_settings()
    lines = [r for r in caplog.records if name.upper() in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert lines[0].levelno == logging.WARNING
    assert suggestion in lines[0].getMessage()
    assert "value-that-is-secret" not in caplog.text


def test_harness_variables_are_not_reported_as_unknown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Test, bench, failpoint and sandbox variables are read elsewhere: no warning for them."""
    for name in ("REAUTH_TEST_X", "REAUTH_BENCH_PG_URL", "REAUTH_FAILPOINT_PAUSE",
                 "REAUTH_SANDBOX_API_KEY"):  # fmt: skip
        monkeypatch.setenv(name, "1")
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        load_settings()
    assert not [r for r in caplog.records if r.name == "worker.config"], caplog.text


# --- MX credentials and the webhook secret -----------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "api_key", "missing"),
    [
        ("", "", ["REAUTH_MX_CLIENT_ID", "REAUTH_MX_API_KEY"]),
        ("client-1", "", ["REAUTH_MX_API_KEY"]),
        ("", "key-1", ["REAUTH_MX_CLIENT_ID"]),
    ],
)
def test_require_mx_credentials_names_what_is_missing(
    client_id: str, api_key: str, missing: list[str]
) -> None:
    """Settings load without MX credentials (status, db, import need none); a command about to
    call MX asks ``require_mx_credentials()``, which names each empty variable."""
    settings = load_settings(mx_client_id=client_id, mx_api_key=api_key)
    with pytest.raises(ConfigError) as info:
        settings.require_mx_credentials()
    for name in missing:
        assert name in str(info.value)
    load_settings(mx_client_id="client-1", mx_api_key="key-1").require_mx_credentials()


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("REAUTH_MX_CLIENT_ID", "client id"),
        ("REAUTH_MX_CLIENT_ID", "client/../x"),
        ("REAUTH_MX_API_KEY", "key-with-newline\n"),
        ("REAUTH_APP_URL_SCHEME", "bad scheme\r\n"),
    ],
)
def test_credentials_and_scheme_with_stray_characters_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    """A stray newline or space (copied from a file) or a path separator is refused at load;
    the message does not echo the value."""
    message = _refused(monkeypatch, {env: value})
    assert env in message
    assert value.strip() not in message


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 bytes"),
        ("whsec_", "24 bytes"),
        ("whsec_not*base64*at-all-but-long-enough", "base64"),
        ("a-raw-passphrase", "24 bytes"),
        ("a raw secret with spaces in it, long", "spaces"),
    ],
)
def test_weak_or_malformed_webhook_secret_is_refused_at_load(secret: str, fragment: str) -> None:
    """REAUTH_WEBHOOK_SECRET: a ``whsec_`` secret must be base64 of at least 24 bytes; a raw
    secret (kept legal: it signs as before) must be at least 24 bytes too."""
    with pytest.raises(ConfigError) as info:
        load_settings(webhook_secret=secret)
    message = str(info.value)
    assert "REAUTH_WEBHOOK_SECRET" in message
    assert fragment in message
    assert secret.removeprefix("whsec_") not in message or secret == "whsec_"


# --- through the real CLI ----------------------------------------------------------------------

CLI_CASES: list[tuple[str, dict[str, str]]] = [
    ("REAUTH_CLAIM_LEASE", {"REAUTH_CLAIM_LEASE": "1e20"}),
    ("REAUTH_LINK_MAX_AGE", {"REAUTH_LINK_MAX_AGE": "-1"}),
    ("REAUTH_MX_SESSION_MARGIN", {"REAUTH_MX_SESSION_MARGIN": "31m"}),
    ("REAUTH_WEBHOOK_URL", {"REAUTH_WEBHOOK_URL": "nonsense"}),
    ("REAUTH_MX_BASE_URL", {"REAUTH_MX_BASE_URL": "http://127.0.0.1:8099"}),
    ("REAUTH_ALLOWED_REDIRECT_PREFIXES", {"REAUTH_ALLOWED_REDIRECT_PREFIXES": "https://"}),
    (
        "REAUTH_APP_REDIRECT_URL",
        {
            "REAUTH_ALLOWED_REDIRECT_PREFIXES": "https://app.example.com/cb/",
            "REAUTH_APP_REDIRECT_URL": "https://app.example.com/cb/\r\nX-Evil: 1",
        },
    ),
    ("REAUTH_WEBHOOK_SECRET", {"REAUTH_WEBHOOK_SECRET": "short-secret"}),
    (".env", {}),  # the .env file below, with a non-UTF-8 byte
]


def test_each_config_class_through_the_cli_is_one_message_and_exit_2(
    sqlite_url: str, tmp_path: Path
) -> None:
    """``reauth status`` with one bad value of each class: exit code 2, exactly one ``error:``
    message naming the variable, no traceback. (Parallel processes, to keep the test fast.)"""
    bad_env_dir = tmp_path / "bad-dotenv"
    bad_env_dir.mkdir()
    (bad_env_dir / ".env").write_bytes(b"REAUTH_LOG_LEVEL=\xff\xfe\n")
    procs = [
        (
            name,
            subprocess.Popen(
                [sys.executable, "-m", "worker", "status"],
                env=_cli_env(sqlite_url, **extra),
                cwd=bad_env_dir if name == ".env" else ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for name, extra in CLI_CASES
    ]
    for name, proc in procs:
        out, err = proc.communicate(timeout=120)
        text = out + err
        assert proc.returncode == 2, (name, text)
        assert "Traceback" not in text, (name, text)
        assert text.count("error:") == 1, (name, text)
        assert name in " ".join(text.split()), (name, text)


def test_unknown_variable_through_the_cli_warns_and_runs(sqlite_url: str) -> None:
    """``REAUTH_MX_APIKEY=... reauth status``: the command runs (exit 0) and standard error has
    one warning naming the typo and ``REAUTH_MX_API_KEY``, without the value."""
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "status"],
        env=_cli_env(sqlite_url, REAUTH_MX_APIKEY="sk-live-typo-secret"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "REAUTH_MX_APIKEY" in proc.stderr
    assert "REAUTH_MX_API_KEY" in proc.stderr
    assert "sk-live-typo-secret" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def _cli_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REAUTH_")}
    env.update({"REAUTH_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), **extra})
    return env
