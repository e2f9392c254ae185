"""Secrets never leave the client: not in logs (ours, httpx's, httpcore's, at DEBUG), not in
exception messages, not in ``repr``.

Secrets: the API key (and its HTTP Basic form), every SSO API token and Nexus session token the
sandbox issued, and every oauth_window_uri (its token part). The sandbox's token generator is
wrapped to record each token it hands out, so the check covers tokens the test never sees.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import structlog
from mx_helpers import MxEnv, browser, run

from worker.errors import MxError
from worker.logging import configure_logging
from worker.mx import OAuthWindow

LIBRARY_LOGGERS = ("httpx", "httpcore", "aiohttp", "redis", "hpack")


@pytest.fixture
def debug_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The service's logging at DEBUG, third-party loggers included; restored afterwards.

    Depends on capsys so the handler writes to the captured stderr.
    """
    root = logging.getLogger()
    saved_level = root.level
    saved = {name: logging.getLogger(name).level for name in LIBRARY_LOGGERS}
    configure_logging(fmt="json", level="DEBUG")
    # Don't cache loggers bound to this test's configuration for later tests.
    structlog.configure(cache_logger_on_first_use=False)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield
    root.handlers = [h for h in root.handlers if h.get_name() != "reauth"]
    root.setLevel(saved_level)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


def test_no_secret_in_debug_logs_errors_or_reprs(
    served: MxEnv,
    debug_logging: None,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Successes and failures on both APIs with everything logged at DEBUG: none of the
    secrets appears in the rendered log, the raw log records, errors or reprs."""
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []
    original = served.sandbox._new_token

    def recording_token() -> str:
        token = original()
        issued.append(token)
        return token

    served.sandbox._new_token = recording_token  # type: ignore[method-assign]
    served.config.expire_session_every = 2
    windows: list[OAuthWindow] = []
    errors: list[MxError] = []

    async def go() -> None:
        for api in ("nexus", "platform"):
            async with served.client(mx_api=api) as mx:
                for member in ("MBR-1", "MBR-2", "MBR-3", "MBR-NOOAUTH", "MBR-GONE"):
                    try:
                        windows.append(await mx.generate_oauth_window_uri(browser(member)))
                    except MxError as exc:
                        errors.append(exc)
                served.config.rate_429 = 1.0
                try:
                    await mx.generate_oauth_window_uri(browser())
                except MxError as exc:
                    errors.append(exc)
                served.config.rate_429 = 0.0
        async with served.client(mx_api_key="wrong-key-xyz") as mx:
            try:
                await mx.generate_oauth_window_uri(browser())
            except MxError as exc:
                errors.append(exc)

    run(go())
    assert len(windows) == 6
    assert len(errors) == 7

    api_key = served.config.api_key
    basic = base64.b64encode(f"{served.client_id}:{api_key}".encode()).decode()
    uri_tokens = [urlsplit(w.oauth_window_uri).path.rsplit("/", 1)[-1] for w in windows]
    secrets = [api_key, basic, "wrong-key-xyz", *issued, *uri_tokens]
    assert len(issued) > 10

    captured = capsys.readouterr()
    rendered = captured.err + captured.out
    raw = "\n".join(f"{r.getMessage()} {r.msg!r} {r.args!r}" for r in caplog.records)
    texts = [str(e) + repr(e) for e in errors] + [repr(w) + str(w) for w in windows]
    assert "mx.http" in rendered  # our DEBUG lines were rendered
    # Requests go straight to the transport, not through httpx.AsyncClient.send, so httpx
    # writes no request lines of its own (they would carry full URLs) even at DEBUG.
    assert not any(r.name == "httpx" for r in caplog.records)
    for secret in secrets:
        assert secret not in rendered
        assert secret not in raw
        for text in texts:
            assert secret not in text
