"""Settings: defaults, parsing, and one clear message (exit 2) for every invalid value."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest

from worker.config import MxApi, MxApiVersion, NotifySink, PathIds, load_settings
from worker.errors import ConfigError


def test_defaults_run_without_services() -> None:
    """With nothing set: SQLite in the working directory, no broker, file sink, Nexus API."""
    s = load_settings()
    assert s.database_url == "sqlite:///reauth.db"
    assert s.broker_url is None
    assert s.redis_url is None
    assert s.mx_api is MxApi.NEXUS
    assert s.effective_notify_sink is NotifySink.FILE
    assert s.reminder_schedule == [timedelta(0), timedelta(hours=24), timedelta(hours=72)]


def test_env_prefix_and_list_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """REAUTH_ variables are read; list settings take JSON or comma-separated values."""
    monkeypatch.setenv("REAUTH_REDIS_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("REAUTH_ALLOWED_REDIRECT_PREFIXES", "https://a.example/, https://b.example/")
    monkeypatch.setenv("REAUTH_APP_REDIRECT_URL", "https://b.example/oauth")
    monkeypatch.setenv("REAUTH_REMINDER_SCHEDULE", "[0, 3600]")
    monkeypatch.setenv("REAUTH_ABANDON_AFTER", "45m")
    monkeypatch.setenv("REAUTH_AGGREGATION_FRESHNESS", "86400")
    s = load_settings()
    assert s.abandon_after == timedelta(minutes=45)
    assert s.aggregation_freshness == timedelta(days=1)
    assert s.allowed_redirect_prefixes == ["https://a.example/", "https://b.example/"]
    assert s.reminder_schedule == [timedelta(0), timedelta(hours=1)]
    assert s.effective_notify_sink is NotifySink.REDIS_STREAM


def test_api_key_is_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MX API key is a SecretStr: repr and str of the settings do not show it."""
    monkeypatch.setenv("REAUTH_MX_API_KEY", "sk-live-very-secret-123")
    s = load_settings()
    assert "sk-live-very-secret-123" not in repr(s)
    assert "sk-live-very-secret-123" not in str(s)
    assert s.mx_api_key.get_secret_value() == "sk-live-very-secret-123"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("REAUTH_DATABASE_URL", "nonsense", "not a database URL"),
        ("REAUTH_DATABASE_URL", "mysql://x/y", "unsupported database"),
        ("REAUTH_DATABASE_URL", "postgresql+psycopg2://x/y", "psycopg 3"),
        ("REAUTH_REDIS_URL", "http://x", "redis://"),
        ("REAUTH_MX_API", "soap", "nexus"),
        ("REAUTH_MX_BASE_URL", "ftp://x", "http"),
        ("REAUTH_MX_MAX_CONCURRENCY", "0", "greater than or equal to 1"),
        ("REAUTH_BATCH_SIZE", "lots", "valid integer"),
        ("REAUTH_REMINDER_SCHEDULE", "3600,0", "increasing"),
        ("REAUTH_LOG_LEVEL", "LOUD", "DEBUG"),
        ("REAUTH_NOTIFY_SINK", "pigeon", "redis-stream"),
        ("REAUTH_ABANDON_AFTER", "soon", "timedelta"),
        ("REAUTH_REASON_OVERRIDES", '{"EXPIRED": "gone"}', "reasons must be"),
        ("REAUTH_MX_BASE_URL", "http://mx.example", "REAUTH_ALLOW_INSECURE_URLS"),
        ("REAUTH_MX_SSO_BASE_URL", "http://sso.example", "REAUTH_ALLOW_INSECURE_URLS"),
        ("REAUTH_MX_RATE_LIMIT_PER_SECOND", "0.01", "greater than or equal to 1"),
        ("REAUTH_MX_API_VERSION", "v20260430", "v20250224"),
        ("REAUTH_MX_PLATFORM_PATH_IDS", "partner", "REAUTH_MX_API=platform"),
        ("REAUTH_MX_URI_HOSTS", "https://mx.com/", "not a host name"),
        ("REAUTH_MX_CREDENTIAL_FAILURE_USERS", "1", "greater than or equal to 2"),
        ("REAUTH_MX_CREDENTIAL_FAILURE_WINDOW", "0", "must be between"),
        ("REAUTH_NOTIFY_GROUPING", "household", "member"),
        ("REAUTH_GROUPING_WINDOW", "2d", "must be between 0s and 1d"),
        ("REAUTH_GROUPING_WINDOW", "-1", "must be between"),
        ("REAUTH_GROUPING_WINDOW", "inf", "finite"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, fragment: str
) -> None:
    """Each invalid value gives a ConfigError naming the variable and what is wrong."""
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert env in message
    assert fragment in message


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"REAUTH_APP_REDIRECT_URL": "https://evil.example/x"}, "REAUTH_ALLOWED_REDIRECT_PREFIXES"),
        ({"REAUTH_NOTIFY_SINK": "webhook"}, "REAUTH_WEBHOOK_URL"),
        ({"REAUTH_NOTIFY_SINK": "redis-stream"}, "REAUTH_REDIS_URL"),
        ({"REAUTH_TASK_TIME_LIMIT": "900"}, "REAUTH_VISIBILITY_TIMEOUT"),
        (
            {"REAUTH_NOTIFY_GROUPING": "user", "REAUTH_GROUPING_WINDOW": "10m"},
            "REAUTH_GROUPING_WINDOW must be below REAUTH_LINK_MAX_AGE",
        ),
    ],
)
def test_cross_field_rules(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    """A redirect outside the allow-list, or a sink without what it needs, is refused at load."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=fragment):
        load_settings()


def test_secret_value_not_echoed_in_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation errors never echo the bad input (it may be a secret pasted in the wrong place)."""
    monkeypatch.setenv("REAUTH_MX_MAX_CONCURRENCY", "sk-secret-pasted-here")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "sk-secret-pasted-here" not in str(info.value)


def test_cli_invalid_database_url_exits_2_with_one_message() -> None:
    """`REAUTH_DATABASE_URL=nonsense reauth db upgrade` prints one clear error, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "db", "upgrade"],
        env={"REAUTH_DATABASE_URL": "nonsense", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "REAUTH_DATABASE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_leases_default_short_and_renewed_by_a_heartbeat() -> None:
    """Leases of 30 s renewed every 10 s: a dead worker's work is free again within 30 s."""
    s = load_settings()
    assert s.claim_lease == timedelta(seconds=30)
    assert s.notify_lease == timedelta(seconds=30)
    assert s.claim_heartbeat == timedelta(seconds=10)


def test_queued_pages_get_a_longer_lease_that_cannot_be_shorter_than_the_claim_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page waiting in the queue keeps its members 10 min by default; a queued lease shorter
    than the running one is refused, naming both variables."""
    assert load_settings().claim_queued_lease == timedelta(minutes=10)
    monkeypatch.setenv("REAUTH_CLAIM_QUEUED_LEASE", "29s")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "REAUTH_CLAIM_QUEUED_LEASE" in str(info.value)
    assert "REAUTH_CLAIM_LEASE" in str(info.value)
    monkeypatch.delenv("REAUTH_CLAIM_QUEUED_LEASE")
    monkeypatch.setenv("REAUTH_CLAIM_LEASE", "1h")  # only the running lease raised: follows it
    assert load_settings().claim_queued_lease == timedelta(hours=1)


@pytest.mark.parametrize("lease", ["REAUTH_CLAIM_LEASE", "REAUTH_NOTIFY_LEASE"])
def test_lease_shorter_than_three_heartbeats_is_refused(
    monkeypatch: pytest.MonkeyPatch, lease: str
) -> None:
    """A lease must outlast two missed heartbeats; the error names both variables."""
    monkeypatch.setenv("REAUTH_CLAIM_HEARTBEAT", "20s")
    monkeypatch.setenv("REAUTH_CLAIM_LEASE", "60s")
    monkeypatch.setenv("REAUTH_NOTIFY_LEASE", "60s")
    assert load_settings().claim_heartbeat == timedelta(seconds=20)
    monkeypatch.setenv(lease, "59s")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert lease in str(info.value)
    assert "REAUTH_CLAIM_HEARTBEAT" in str(info.value)


def test_mx_settings_of_the_version_and_uri_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defaults: Platform v20250224, guids in paths, MX's own app2app default, no host
    allow-list, 3 users in 10 minutes; host lists take "*.x", ".x" or "x" for "x and below"."""
    s = load_settings()
    assert (s.mx_api_version, s.mx_platform_path_ids, s.app2app) == (
        MxApiVersion.V20250224,
        PathIds.GUID,
        None,
    )
    assert (s.mx_uri_hosts, s.mx_credential_failure_users) == ([], 3)
    assert s.mx_credential_failure_window == timedelta(minutes=10)
    assert s.oauth_error_delay == timedelta(hours=1)
    monkeypatch.setenv("REAUTH_MX_URI_HOSTS", "*.MX.com, .moneydesktop.com,bank.example")
    monkeypatch.setenv("REAUTH_APP2APP", "false")
    monkeypatch.setenv("REAUTH_MX_API", "platform")
    monkeypatch.setenv("REAUTH_MX_PLATFORM_PATH_IDS", "partner")
    s = load_settings()
    assert s.mx_uri_hosts == ["mx.com", "moneydesktop.com", "bank.example"]
    assert s.app2app is False
    assert s.mx_platform_path_ids is PathIds.PARTNER


def test_plain_http_mx_urls_need_the_insecure_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """http:// MX base URLs load only with REAUTH_ALLOW_INSECURE_URLS=true (sandbox, tests)."""
    monkeypatch.setenv("REAUTH_MX_BASE_URL", "http://127.0.0.1:8099")
    monkeypatch.setenv("REAUTH_MX_SSO_BASE_URL", "http://127.0.0.1:8099/sso")
    with pytest.raises(ConfigError, match="REAUTH_ALLOW_INSECURE_URLS"):
        load_settings()
    monkeypatch.setenv("REAUTH_ALLOW_INSECURE_URLS", "true")
    assert load_settings().mx_base_url == "http://127.0.0.1:8099"


def test_grouping_defaults_to_member_and_user_grouping_loads() -> None:
    """``member`` (today's behaviour) by default; ``user`` with a window below the link age
    loads, and a window as long as the link age is fine when no MX link is in the message."""
    from worker.config import NotifyGrouping

    default = load_settings()
    assert default.notify_grouping is NotifyGrouping.MEMBER
    assert default.grouping_window == timedelta(minutes=5)
    grouped = load_settings(notify_grouping="user", grouping_window="9m")
    assert (grouped.notify_grouping, grouped.grouping_window) == (
        NotifyGrouping.USER,
        timedelta(minutes=9),
    )
    assert load_settings(notify_grouping="member", grouping_window="10m").grouping_window == (
        timedelta(minutes=10)
    )
    reconnect_only = load_settings(
        notify_grouping="user",
        grouping_window="1h",
        link_mode="reconnect",
        public_url="https://reauth.example",
        reconnect_secrets="k" * 32,
    )
    assert reconnect_only.grouping_window == timedelta(hours=1)


def test_tune_gc_freezes_the_heap_and_raises_the_thresholds() -> None:
    import gc

    from worker.runtime import GC_THRESHOLDS, tune_gc

    saved = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the imported modules' objects, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
