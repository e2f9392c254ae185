"""docker-compose.yml and docs agree with the code (no Docker engine runs here).

Each service's command must be a real ``reauth`` or ``celery`` command of this project, and every
``REAUTH_`` variable set anywhere (compose, .env.example, README) must be a real setting, and
every setting must be documented in the README and .env.example.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from worker.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_expected_services_with_healthchecks() -> None:
    """postgres and redis have healthchecks; migrate, worker, beat and the sandbox exist."""
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "worker", "beat", "mx-sandbox", "serve"} <= set(
        services
    )
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    assert services["worker"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


@pytest.mark.parametrize(
    "service", ["migrate", "worker", "worker-events", "beat", "mx-sandbox", "serve"]
)
def test_compose_commands_are_real_commands(service: str) -> None:
    """The command of each of our services parses as a project command (``--help`` works)."""
    command = _compose()["services"][service]["command"]
    assert isinstance(command, list)
    if command[0] == "reauth":
        from worker.cli import _register, app

        _register()
        # Walk down the sub-commands to the leaf and ask it for help: unknown ones fail.
        words = [w for w in command[1:] if not w.startswith("-")][:2]
        result = CliRunner().invoke(app, [*words[: 1 if words[0] != "db" else 2], "--help"])
        assert result.exit_code == 0, result.output
    else:
        assert command[:3] == ["celery", "-A", "worker.celery_app"]
        from worker.celery_app import app as celery_app

        assert "reauth.scan" in celery_app.tasks or _loads_tasks(celery_app)
        assert command[3] in {"worker", "beat"}


def _consumed_queues(command: list[str]) -> set[str] | None:
    """The queues a worker command consumes (every queue without -Q); None if not a worker."""
    from worker.app.celery_app import QUEUES

    words = command[1:] if command[0] == "reauth" else command[3:]
    if not words or words[0] != "worker":
        return None
    for flag in ("-Q", "--queues"):
        if flag in words:
            return set(words[words.index(flag) + 1].split(","))
    return set(QUEUES)


def test_every_routed_queue_has_a_consumer_and_events_their_own_worker() -> None:
    """Each queue a task is routed to is consumed by some worker service, and the event-side
    tasks (relay, webhook application) have a worker of their own, the production profile."""
    from worker.app.celery_app import EVENTS_QUEUE, QUEUE, ROUTES, create_app

    app = create_app()
    app.loader.import_default_modules()
    routed = {app.amqp.router.route({}, name)["queue"].name for name in app.tasks}
    routed.discard("celery")  # Celery's built-in tasks, never sent by this project
    assert routed == {QUEUE, *ROUTES.values()}
    consumers = {
        name: queues
        for name, service in _compose()["services"].items()
        if (queues := _consumed_queues(service.get("command") or [""])) is not None
    }
    assert routed <= set().union(*consumers.values()), consumers
    assert {EVENTS_QUEUE} in consumers.values(), consumers


def _loads_tasks(app: Any) -> bool:
    app.loader.import_default_modules()
    return {"reauth.scan", "reauth.regenerate", "reauth.dispatch_notifications"} <= set(app.tasks)


def test_compose_variables_are_real_settings() -> None:
    """Every REAUTH_ variable the compose file sets is a setting the code reads."""
    env = _compose()["x-reauth-env"]
    unknown = set(env) - SETTING_NAMES
    assert not unknown, f"not settings: {unknown}"
    for service in _compose()["services"].values():
        for key in service.get("environment", {}) or {}:
            if key.startswith(ENV_PREFIX):
                assert key in SETTING_NAMES


@pytest.mark.parametrize("doc", ["README.md", ".env.example"])
def test_every_setting_is_documented_and_no_unknown_ones(doc: str) -> None:
    """README and .env.example name every setting, and name no variable that does not exist."""
    text = (ROOT / doc).read_text()
    mentioned = set(re.findall(r"\bREAUTH_[A-Z0-9_]+\b", text))
    mentioned -= {"REAUTH_TEST_DATABASE_URL", "REAUTH_TEST_REDIS_URL"}
    assert SETTING_NAMES - mentioned == set(), f"undocumented in {doc}"
    assert mentioned - SETTING_NAMES == set(), f"unknown variables in {doc}"


def test_env_example_loads_as_dot_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copying .env.example to .env gives a valid configuration equal to the defaults."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    from worker.config import load_settings

    loaded = load_settings()
    monkeypatch.chdir(ROOT / "tests")
    assert loaded.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]


# --- the defaults the docs state are the code's ---------------------------------------------------

#: README cells that describe a default in words, not as a value to parse.
_WORDED = {"unset", "empty"}


def _readme_defaults() -> dict[str, str]:
    """``REAUTH_X`` → the default the README's settings table gives as one backticked value."""
    out = {}
    for name, cell in re.findall(r"^\| `(REAUTH_[A-Z0-9_]+)` \| ([^|]+) \|", _readme(), re.M):
        m = re.fullmatch(r"`([^`]*)`", cell.strip())
        if m:
            out[name] = m.group(1)
    return out


def _env_example_defaults() -> dict[str, str]:
    """``REAUTH_X`` → ``V`` for lines ``REAUTH_X=  # default V`` (an unset line saying its
    default in the comment), and the value itself where a line sets one."""
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"(REAUTH_[A-Z0-9_]+)=(\S*)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        name, value, comment = m.group(1), m.group(2), m.group(3) or ""
        # A value (``90d``, ``127.0.0.1``, ``both``), not words (``default MX's app origins``).
        said = re.match(r"default ([a-z0-9][a-z0-9._:/-]*)(?:[\s,;]|$)", comment)
        if value:
            out[name] = value
        elif said:
            out[name] = said.group(1)
    return out


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def _value_of(name: str, text: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(name, text)
    try:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
    finally:
        monkeypatch.delenv(name)
    return getattr(settings, name.removeprefix(ENV_PREFIX).lower())


def _default_of(name: str) -> Any:
    return getattr(Settings(_env_file=None), name.removeprefix(ENV_PREFIX).lower())  # type: ignore[call-arg]


@pytest.mark.parametrize("doc", ["README.md", ".env.example"])
def test_the_defaults_the_docs_state_are_the_codes(
    doc: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each default the README's table (or an .env.example comment) states, read as the setting
    reads it, equals the code's default: a changed default shows up here, not in production."""
    for var in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    stated = _readme_defaults() if doc == "README.md" else _env_example_defaults()
    assert len(stated) >= 40, stated  # the parser still reads the doc
    wrong = {}
    for name, text in stated.items():
        if text in _WORDED:
            continue
        if _value_of(name, text, monkeypatch) != _default_of(name):
            wrong[name] = (text, _default_of(name))
    assert wrong == {}, f"{doc} states defaults the code does not have"
