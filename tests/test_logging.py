"""Logging: JSON lines, bound context, stdlib routed through structlog, and redaction."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from worker.logging import (
    bind_context,
    clear_context,
    configure_logging,
    fingerprint_uri,
    register_secret,
)

API_KEY = "mx-api-key-0123456789abcdef"
SESSION_TOKEN = "CWforZl1Vn2vC_v6H4rnQRT1DoWpDouJAV-_5TBmiQRAtA8rsOG"
URI_TOKEN = "opaque-one-time-token-7f3a9c"
URI = f"https://int-app.moneydesktop.com/oauth/predirect_to/MBR-1/{URI_TOKEN}?referral_source=APP"


@pytest.fixture
def out() -> io.StringIO:
    """Configure JSON logging into a buffer the test reads."""
    buf = io.StringIO()
    configure_logging(fmt="json", level="DEBUG", stream=buf)
    register_secret(API_KEY)
    return buf


def _read(buf: io.StringIO) -> tuple[str, list[dict[str, object]]]:
    text = buf.getvalue()
    return text, [json.loads(line) for line in text.splitlines() if line.strip()]


def test_secrets_do_not_survive_into_log_output(out: io.StringIO) -> None:
    """An API key, a session token and an oauth_window_uri token never reach the output,
    whether logged under a secret-looking key, nested, in free text or through stdlib logging."""
    log = structlog.get_logger("test")
    log.debug("request", api_key=API_KEY, headers={"MD-SESSION-TOKEN": SESSION_TOKEN})
    log.info("generated", oauth_window_uri=URI, member_guid="MBR-1")
    log.warning(f"free text mentions {URI} and key {API_KEY}")
    log.info("nested", details={"session_token": SESSION_TOKEN, "links": [URI]})
    logging.getLogger("some.library").error("stdlib says %s with %s", URI, API_KEY)
    try:
        raise RuntimeError(f"boom with {URI} and {API_KEY}")
    except RuntimeError:
        log.exception("failed")
    text, records = _read(out)
    assert len(records) == 6
    for secret in (API_KEY, SESSION_TOKEN, URI_TOKEN):
        assert secret not in text
    assert records[1]["oauth_window_uri"] == fingerprint_uri(URI)
    assert str(records[1]["oauth_window_uri"]).startswith("https://int-app.moneydesktop.com/")


def test_bound_context_appears_and_clears(out: io.StringIO) -> None:
    """Context bound with contextvars (task id, member guid) is on every line until cleared."""
    bind_context(task_id="t-1", member_guid="MBR-9")
    structlog.get_logger("x").info("one")
    logging.getLogger("celery.worker").info("two")
    clear_context()
    structlog.get_logger("x").info("three")
    _, records = _read(out)
    assert records[0]["task_id"] == "t-1"
    assert records[1]["member_guid"] == "MBR-9"
    assert "task_id" not in records[2]
    assert {r["level"] for r in records} == {"info"}


def test_fingerprint_is_stable_and_short() -> None:
    """The same URI always gets the same fingerprint; different URIs differ."""
    assert fingerprint_uri(URI) == fingerprint_uri(URI)
    assert fingerprint_uri(URI) != fingerprint_uri(URI + "x")
    assert URI_TOKEN not in fingerprint_uri(URI)


def test_reconnect_tokens_and_states_do_not_survive(out: io.StringIO) -> None:
    """Our own bearer links (a reconnect path, an APP state, a click token) are redacted in
    free text, in stdlib records (a web server's request line) and in exceptions."""
    import uuid
    from datetime import UTC, datetime

    from worker.core import tokens

    token = tokens.sign(tokens.RECONNECT, uuid.uuid4(), datetime(2030, 1, 1, tzinfo=UTC), b"k" * 32)
    log = structlog.get_logger("test")
    log.info(f"GET /r/{token} 200")
    logging.getLogger("uvicorn.error").warning("path %s", f"/oauth/complete?state={token}&x=1")
    log.info("report", body=f"click={token}")
    text, records = _read(out)
    assert len(records) == 3
    assert token not in text
    assert "/r/[REDACTED]" in text


def test_lines_below_the_level_are_dropped_before_any_processor_and_the_level_stays_live() -> None:
    """DEBUG lines (per member, per MX call) cost a level check when DEBUG is off: redaction,
    the hot path's most expensive processor, never sees them; raising the stdlib level later
    (setLevel, caplog) still takes effect on an already cached logger."""
    buf = io.StringIO()
    configure_logging(fmt="json", level="INFO", stream=buf)
    seen: list[str] = []
    from worker import logging as wlog

    real = wlog.redact

    def counting(logger: object, method: str, event: structlog.typing.EventDict) -> object:
        seen.append(str(event.get("event")))
        return real(logger, method, event)  # type: ignore[arg-type]

    processors = structlog.get_config()["processors"]
    at = processors.index(real)
    processors[at] = counting
    try:
        log = structlog.get_logger("reauth.test.levels")
        log.debug("quiet", member_guid="MBR-1")
        log.info("loud", claimed=3)
        assert seen == ["loud"]
        logging.getLogger("reauth.test.levels").setLevel(logging.DEBUG)
        log.debug("now_heard")
    finally:
        processors[at] = real
        logging.getLogger("reauth.test.levels").setLevel(logging.NOTSET)
    _, lines = _read(buf)
    assert [line["event"] for line in lines] == ["loud", "now_heard"]
    assert seen == ["loud", "now_heard"]
