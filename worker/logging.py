"""Logging: structlog configured once, stdlib and Celery logs routed through the same pipeline.

JSON lines in production, a readable console on a TTY. Context (task id, member guid, run id) is
bound with ``structlog.contextvars``. The :func:`redact` processor runs last before rendering, on
every event from structlog *and* the stdlib, and removes secrets:

* values under keys that name a secret (api_key, token, password, secret, authorization, ...);
* the token-bearing path and query of any ``oauth_window_uri`` (kept: scheme, host and a short
  fingerprint, enough to correlate two log lines without being able to use the link);
* secrets registered at start-up (the MX API key) wherever they appear in a string.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import structlog
from structlog.typing import EventDict, Processor

if TYPE_CHECKING:
    from worker.config import Settings

#: Keys whose values are secrets, matched case-insensitively as substrings of the key.
SECRET_KEY_PARTS = (
    "api_key",
    "apikey",
    "token",
    "password",
    "passwd",
    "secret",
    "authorization",
    "cookie",
    "md-api-key",
    "md-session-token",
    "md-api-token",
)
#: Keys that hold an oauth_window_uri: logged as host + fingerprint.
URI_KEYS = ("oauth_window_uri", "uri", "url_with_token")

REDACTED = "[REDACTED]"

_URI_RE = re.compile(r"https?://[^\s\"'<>]+/oauth/[^\s\"'<>]*", re.IGNORECASE)
#: Our own bearer links: a reconnect token in a path, an APP ``state`` or click token in a query.
_OUR_TOKEN_RE = re.compile(r"(/r/|(?<![A-Za-z0-9_])(?:state|click)=)[A-Za-z0-9_-]{20,}")
_known_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value (e.g. the MX API key) so it is scrubbed from any log string."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def fingerprint_uri(uri: str) -> str:
    """``https://host/…#<8 hex>``: safe to log, stable for the same URI."""
    try:
        parts = urlsplit(uri)
        host = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "uri"
    except ValueError:
        host = "uri"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:8]
    return f"{host}/…#{digest}"


def _scrub_text(text: str) -> str:
    text = _URI_RE.sub(lambda m: fingerprint_uri(m.group(0)), text)
    text = _OUR_TOKEN_RE.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in {"token_count", "tokens_created"}:
        return False
    return any(part in lowered for part in SECRET_KEY_PARTS)


def _scrub(key: str, value: Any, depth: int = 0) -> Any:
    if depth > 5:
        return value
    if _is_secret_key(key) and value not in (None, ""):
        return REDACTED
    if key.lower() in URI_KEYS and isinstance(value, str):
        # Idempotent: events pass through redact twice (structlog chain, then the formatter).
        return value if "/…#" in value else fingerprint_uri(value)
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, MutableMapping):
        return {k: _scrub(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(key, v, depth + 1) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: remove secrets from every key, nested dicts and free text."""
    for key in list(event_dict):
        event_dict[key] = _scrub(str(key), event_dict[key])
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]


class FilteringBoundLogger(structlog.stdlib.BoundLogger):
    """The stdlib bound logger whose ``debug``/``info`` return at once when the stdlib logger
    would drop the event: no context copy, no processor call (what
    ``structlog.make_filtering_bound_logger`` does), while the level stays the stdlib logger's
    live one, so ``setLevel`` and pytest's ``caplog.set_level`` keep working on cached loggers.
    Per-member and per-MX-call lines are DEBUG: with DEBUG off they cost one level check.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


def configure_logging(
    *, fmt: str | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Configure structlog and the stdlib root logger once per process.

    ``fmt`` is ``"json"`` or ``"console"``; ``None`` picks console on a TTY and JSON otherwise.
    ``stream`` defaults to standard error.
    """
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        exc_processors: list[Processor] = [structlog.processors.format_exc_info]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        exc_processors = []

    structlog.configure(
        processors=[
            # First, so an event below the level costs one check instead of the whole chain
            # (redaction included): the worker logs debug lines per MX call.
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            # Redact before the event leaves structlog, so no handler (ours, pytest's, an error
            # tracker's) ever holds the secret; the formatter redacts stdlib records again.
            redact,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=FilteringBoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc_processors,
            redact,
            _scrub_exception_text,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("reauth")
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if h.get_name() != "reauth"]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; the URL of a Nexus call is harmless but noisy.
    for noisy in ("httpx", "httpcore", "aiohttp.access", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _scrub_exception_text(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    exc = event_dict.get("exception")
    if isinstance(exc, str):
        event_dict["exception"] = _scrub_text(exc)
    return event_dict


def bind_context(**values: Any) -> None:
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    structlog.contextvars.clear_contextvars()


def scrub_all(values: Iterable[str]) -> list[str]:
    """Scrub several strings (used for exception messages shown to operators)."""
    return [_scrub_text(v) for v in values]


def setup_from_settings(settings: Settings, *, level: str | None = None) -> None:
    """Configure logging for an entry point from its settings, registering every secret the
    settings hold so no log line can carry one."""
    register_secret(settings.mx_api_key.get_secret_value())
    if settings.webhook_secret is not None:
        register_secret(settings.webhook_secret.get_secret_value())
    for key in settings.reconnect_secrets:
        register_secret(key.get_secret_value())
    configure_logging(
        fmt=settings.log_format.value if settings.log_format else None,
        level=level or settings.log_level,
    )
