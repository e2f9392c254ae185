"""Settings: the one place that reads the environment, and checks it.

Every setting is an environment variable with the ``REAUTH_`` prefix (also read from a ``.env``
file in the working directory). The names are a public contract: the README, ``.env.example``
and ``docker-compose.yml`` use them, and a test checks that all three agree with this class.

What loads here cannot break later: every number and duration has a finite range, URLs must
name a host (with a valid port) and use https unless ``REAUTH_ALLOW_INSECURE_URLS``, redirect
prefixes must name a host and are compared after path normalisation, and settings that depend on
one another are checked together. Invalid values never produce a traceback for an operator:
:func:`load_settings` turns every problem into :class:`worker.errors.ConfigError`, whose message
names each variable and what is wrong with it (never the value, which may be a secret), and the
CLI exits with code 2. An unknown ``REAUTH_`` variable (a typo) is not an error; it is logged at
warning level with the closest real setting.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import io
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import SplitResult, urlsplit

from dotenv import dotenv_values
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.errors import ConfigError

#: Prefix of every environment variable this service reads.
ENV_PREFIX = "REAUTH_"
#: ``REAUTH_`` variables that are not settings but are read elsewhere: the test and bench
#: harnesses, the failpoints (test instrumentation) and the sandbox's own options.
NOT_SETTINGS_PREFIXES = ("REAUTH_TEST_", "REAUTH_BENCH_", "REAUTH_FAILPOINT", "REAUTH_SANDBOX_")
#: MX's sliding Nexus session lifetime (the same value as ``worker.mx.sessions.NEXUS_SESSION_TTL``;
#: copied because the settings must not import the MX client).
NEXUS_SESSION_LIFETIME = timedelta(minutes=30)
#: Shortest webhook signing key, in bytes (the Standard Webhooks spec: 24 to 64 bytes).
MIN_WEBHOOK_KEY_BYTES = 24

log = logging.getLogger(__name__)


class MxApi(StrEnum):
    """Which MX API generates the OAuth window URI."""

    NEXUS = "nexus"
    PLATFORM = "platform"


class LinkMode(StrEnum):
    """``both``: MX is asked at scan time (``oauth_window_uri``) and again at click time;
    ``reconnect``: only at click time, so people who never click cost no MX call."""

    BOTH = "both"
    RECONNECT = "reconnect"


class MxApiVersion(StrEnum):
    """Which Platform API version the client speaks (``Accept`` + ``Accept-Version``)."""

    V20250224 = "v20250224"
    V20111101 = "v20111101"


class PathIds(StrEnum):
    """What goes into Platform API paths: MX guids, or the partner's own ids where MX allows."""

    GUID = "guid"
    PARTNER = "partner"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class NotifyGrouping(StrEnum):
    """``member``: one message per (member, episode, reminder); ``user``: the due messages of
    one user within ``REAUTH_GROUPING_WINDOW`` go out as one ``reauth.oauth_links`` message."""

    MEMBER = "member"
    USER = "user"


class NotifySink(StrEnum):
    REDIS_STREAM = "redis-stream"
    WEBHOOK = "webhook"
    CELERY = "celery"
    FILE = "file"


# --- durations ---------------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: The inclusive range of each duration setting, and why a bound is where it is. The upper
#: bounds also keep every ``now + duration`` far from datetime's limits (``1e20`` or
#: ``99999999999d`` raised OverflowError tracebacks before).
_DURATION_RANGES: dict[str, tuple[timedelta, timedelta, str]] = {
    # The margin is taken off MX's 30-minute lifetime; 30 minutes or more leaves no session.
    "mx_session_margin": (
        timedelta(0),
        timedelta(minutes=29),
        "Nexus sessions live 30 minutes at MX",
    ),
    # Zero would call every OAuth window still open abandoned at once.
    "abandon_after": (timedelta(minutes=1), timedelta(days=30), ""),
    # Zero is meaningful: never treat an aggregation as fresh.
    "aggregation_freshness": (timedelta(0), timedelta(days=365), ""),
    # backoff_delay multiplies the base by up to 2**32; an hour keeps that inside timedelta.
    "backoff_base": (timedelta(seconds=1), timedelta(hours=1), ""),
    "backoff_cap": (timedelta(seconds=1), timedelta(days=7), ""),
    "scan_interval": (timedelta(seconds=1), timedelta(days=1), ""),
    # A lease of zero or less is no lease: a rerun took members a running scan held.
    "claim_lease": (timedelta(seconds=1), timedelta(days=1), ""),
    "claim_queued_lease": (timedelta(seconds=1), timedelta(days=1), ""),
    "notify_lease": (timedelta(seconds=1), timedelta(days=1), ""),
    # Below a minute nearly every link would be regenerated again before delivery; zero or less
    # and nothing is ever delivered.
    "link_max_age": (timedelta(minutes=1), timedelta(days=7), ""),
    "claim_heartbeat": (timedelta(seconds=1), timedelta(hours=1), ""),
    # How long the relay may hold a person's first due message for its siblings. Zero groups
    # only what is due in the same relay pass; a day is already far too late for a broken link.
    "grouping_window": (timedelta(0), timedelta(days=1), ""),
    "reconnect_ttl": (timedelta(minutes=1), timedelta(days=90), ""),
    "confirm_window": (timedelta(seconds=1), timedelta(days=1), ""),
    "mx_credential_failure_window": (timedelta(seconds=1), timedelta(days=1), ""),
    "oauth_error_delay": (timedelta(0), timedelta(days=30), ""),
}
_REMINDER_RANGE = (timedelta(0), timedelta(days=365), "")


def _format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _duration_range_error(bounds: tuple[timedelta, timedelta, str]) -> ValueError:
    low, high, why = bounds
    text = f"must be between {_format_duration(low)} and {_format_duration(high)}"
    return ValueError(f"{text} ({why})" if why else text)


def _parse_duration(value: Any, bounds: tuple[timedelta, timedelta, str]) -> Any:
    """Seconds ("1800", 1800) or a number with a unit ("30m", "24h", "2d") → timedelta.

    The number is checked against ``bounds`` before a timedelta is built, so no value can
    overflow. Anything else is returned unchanged for pydantic (ISO 8601, a timedelta), and
    :func:`_check_duration` checks the result.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        number, scale = text, 1
        if text[:-1] and text[-1] in _DURATION_UNITS:
            number, scale = text[:-1], _DURATION_UNITS[text[-1]]
        try:
            seconds = float(number) * scale
        except ValueError:
            return value
    if seconds is None:
        return value
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    low, high, _ = bounds
    if not low.total_seconds() <= seconds <= high.total_seconds():
        raise _duration_range_error(bounds)
    return timedelta(seconds=seconds)


def _check_duration(value: timedelta, bounds: tuple[timedelta, timedelta, str]) -> timedelta:
    if not bounds[0] <= value <= bounds[1]:
        raise _duration_range_error(bounds)
    return value


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc.msg}") from exc
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


# --- URLs --------------------------------------------------------------------------------------

#: Whitespace, control characters and backslashes: never part of a URL we accept (CR/LF splits
#: headers, and browsers read a backslash as ``/`` in http(s) URLs).
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\\]")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*", re.IGNORECASE)
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Schemes a browser would run or read locally instead of navigating to.
_DANGEROUS_SCHEMES = frozenset({"javascript", "data", "vbscript", "file", "blob", "about"})
_REDIS_SCHEMES = ("redis", "rediss")
_BROKER_SCHEMES = (*_REDIS_SCHEMES, "redis+socket", "sentinel")


def _valid_host(host: str) -> bool:
    """A DNS name (labels of letters, digits, ``-`` and ``_``) or an IP address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


def _split_url(value: str) -> SplitResult:
    """``urlsplit`` that also checks what urlsplit leaves unchecked: characters, host and port.

    Raises:
        ValueError: the message says what is wrong and never repeats the URL.
    """
    if _UNSAFE_URL_CHARS.search(value):
        raise ValueError("must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port or host") from None
    if not parts.scheme or not value[len(parts.scheme) :].startswith("://"):
        raise ValueError("must be an absolute URL (scheme://host/...)")
    if parts.hostname is not None and not _valid_host(parts.hostname):
        raise ValueError("has an invalid host name")
    if port == 0:
        raise ValueError("has an invalid port (1-65535)")
    return parts


def _check_http_url(value: str, *, base: bool) -> str:
    """An http(s) URL that names a host; a ``base`` URL (paths are appended) has no userinfo,
    query or fragment. Whether plain http is allowed is decided by the model validator."""
    parts = _split_url(value)
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must name a host (https://host/...)")
    if base and (parts.username is not None or parts.password is not None):
        raise ValueError("must not carry credentials (set REAUTH_MX_CLIENT_ID/REAUTH_MX_API_KEY)")
    if base and (parts.query or parts.fragment or "?" in value or "#" in value):
        raise ValueError("must not have a query or fragment (paths are appended to it)")
    return value


def _check_redis_url(value: str, schemes: tuple[str, ...]) -> str:
    """A Redis URL: one of ``schemes``; redis(s):// names a host and a numeric database."""
    parts = _split_url(value)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise ValueError("must start with " + ", ".join(f"{s}://" for s in schemes))
    if scheme in _REDIS_SCHEMES:
        if not parts.hostname:
            raise ValueError("must name a host (redis://host:6379/0)")
        if parts.path not in {"", "/"} and not re.fullmatch(r"/\d+", parts.path):
            raise ValueError("the path must be a database number (redis://host:6379/0)")
    elif scheme in {"unix", "redis+socket"} and not parts.path:
        raise ValueError("must name a socket path (unix:///path/to/redis.sock)")
    return value


def _check_redirect_url(value: str) -> str:
    """A redirect URL or allow-list prefix: ``scheme://``; http(s) ones must name a host.

    Custom app schemes (``exampleapp://``) route only to the app that registered them, so a
    prefix naming just the scheme is allowed for those; for http(s) it would allow any host.
    """
    parts = _split_url(value)
    scheme = parts.scheme.lower()
    if scheme in _DANGEROUS_SCHEMES:
        raise ValueError(f"must not use the {scheme}: scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not carry user information (user@host)")
    if scheme in _DEFAULT_PORTS and not parts.hostname:
        raise ValueError("must name a host (https://host/...)")
    if _normalised_url(value) is None:
        raise ValueError("must not contain an encoded slash or backslash (%2f, %5c)")
    return value


def _remove_dot_segments(path: str) -> str | None:
    """RFC 3986 section 5.2.4, also for ``%2e`` (browsers read ``%2e%2e`` as ``..``).

    ``None`` when the path has an encoded slash or backslash, which a server may decode into a
    separator after we matched: such a URL is never allowed.
    """
    if re.search(r"%(2f|5c)", path, re.IGNORECASE):
        return None
    segments = path.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        dots = segment.lower().replace("%2e", ".")
        last = index == len(segments) - 1
        if dots in {".", ".."}:
            if dots == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")  # "/a/b/.." is "/a/", not "/a"
            continue
        out.append(segment)
    return "/".join(out)


def _normalised_url(url: str) -> str | None:
    """``url`` in the form redirect prefixes are compared in, or ``None`` if it is unusable.

    Lower-case scheme and host, default port dropped, dot segments removed, an empty http(s)
    path made ``/``; the query and fragment are kept as written. Unusable: control characters,
    spaces or backslashes, no ``scheme://``, user information, an http(s) URL without a host,
    an invalid port, an encoded slash in the path.
    """
    try:
        parts = _split_url(url)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        return None
    host = parts.hostname or ""
    port = parts.port
    if scheme in _DEFAULT_PORTS:
        if not host:
            return None
        if port == _DEFAULT_PORTS[scheme]:
            port = None
    path = _remove_dot_segments(parts.path)
    if path is None:
        return None
    if scheme in _DEFAULT_PORTS and not path:
        path = "/"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    # Query and fragment exactly as written (a prefix ending in "?" must stay one).
    after = url[len(parts.scheme) + 3 + len(parts.netloc) :]
    cut = min((i for i in (after.find("?"), after.find("#")) if i >= 0), default=len(after))
    return f"{scheme}://{netloc}{path}{after[cut:]}"


def redirect_allowed(url: str, prefixes: Iterable[str]) -> bool:
    """True when ``url`` is under one of the allow-listed ``prefixes``, matched at a boundary.

    Both sides are normalised first (:func:`_normalised_url`), so ``/cb/../../admin`` is
    ``/admin`` and no longer under ``/cb/``, and a URL with control characters, user information
    or an encoded slash is never allowed. A prefix that is unusable or names no host (``https://``
    or ``https:`` allowed any host) allows nothing. A plain ``startswith`` let the prefix
    ``https://app.example.com`` allow ``https://app.example.com.evil.net/cb``: the match must end
    the prefix at ``/``, ``?`` or ``#``, or the prefix must itself end with one of them, or the
    URL must equal it.
    """
    target = _normalised_url(url)
    if target is None:
        return False
    for prefix in prefixes:
        norm = _normalised_url(prefix) if prefix else None
        if norm is None or not target.startswith(norm):
            continue
        rest = target[len(norm) :]
        if not rest or norm.endswith(_URL_BOUNDARIES) or rest.startswith(_URL_BOUNDARIES):
            return True
    return False


_URL_BOUNDARIES = ("/", "?", "#")


# --- secrets and identifiers -------------------------------------------------------------------

_WHSEC_PREFIX = "whsec_"
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")


def webhook_signing_key(secret: str) -> bytes:
    """The HMAC key of a webhook secret: base64-decoded ``whsec_…``, else its raw UTF-8 bytes.

    Raw secrets stay legal, so that a deployment's existing receivers keep verifying, but both
    forms must give at least :data:`MIN_WEBHOOK_KEY_BYTES` bytes of key.

    Raises:
        ValueError: what is wrong, never the secret itself.
    """
    if not secret:
        raise ValueError("must not be empty")
    if re.search(r"[\x00-\x20\x7f]", secret):
        raise ValueError("must not contain spaces or control characters (a stray newline?)")
    if secret.startswith(_WHSEC_PREFIX):
        encoded = secret.removeprefix(_WHSEC_PREFIX)
        # Padding is optional, as in the standardwebhooks library that receivers verify with.
        padded = encoded + "=" * (-len(encoded) % 4)
        if not _BASE64.fullmatch(encoded):
            raise ValueError("a whsec_ secret must be followed by base64 (the key bytes)")
        try:
            key = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be followed by base64 (the key bytes)") from None
        form = "a whsec_ secret must decode to"
    else:
        key = secret.encode()
        form = "a raw (non-whsec_) secret must be"
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ValueError(
            f"too short: {form} at least {MIN_WEBHOOK_KEY_BYTES} bytes; generate one with "
            "whsec_ + base64 of 32 random bytes"
        )
    return key


class Settings(BaseSettings):
    """All runtime configuration. Frozen: build a new one with ``model_copy(update=...)``.

    ``model_copy`` does not validate again: the copy must stay within what loads.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        # An empty variable (e.g. copied from .env.example) means "use the default".
        env_ignore_empty=True,
    )

    # --- storage and brokers -------------------------------------------------------------
    database_url: str = "sqlite:///reauth.db"
    broker_url: str | None = None
    redis_url: str | None = None

    # --- MX ----------------------------------------------------------------------------------
    mx_api: MxApi = MxApi.NEXUS
    mx_base_url: str = "https://int-data.moneydesktop.com"
    mx_sso_base_url: str = "https://int-sso.moneydesktop.com"
    mx_client_id: str = ""
    mx_api_key: SecretStr = SecretStr("")
    mx_timeout: float = Field(default=10.0, ge=0.1, le=300, allow_inf_nan=False)
    mx_max_concurrency: int = Field(default=64, ge=1, le=2000)
    #: Bounded: a tiny rate (0.01/s) once pushed the shared limiter's next slot minutes ahead.
    mx_rate_limit_per_second: float = Field(
        default=200.0, ge=1.0, le=1_000_000.0, allow_inf_nan=False
    )
    mx_max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    #: Treat a Nexus session as expired this long before MX's 30-minute sliding expiry.
    mx_session_margin: timedelta = timedelta(minutes=5)
    #: Allow plain-http URLs (MX, the sandbox's OAuth pages, webhook sink, redirects). Off in
    #: production; the sandbox, the demo and the tests turn it on.
    allow_insecure_urls: bool = False
    #: Platform API version: v20250224 (Accept: application/json) or v20111101 (vnd.mx.api.v1).
    mx_api_version: MxApiVersion = MxApiVersion.V20250224
    #: v20250224 only: put the partner's user_id (and member id) in Platform paths when known.
    mx_platform_path_ids: PathIds = PathIds.GUID
    #: ``enable_app2app`` on Platform APP links; None leaves MX's default (true).
    app2app: bool | None = None
    #: Hosts (and their subdomains) an oauth_window_uri may point at; empty: not enforced.
    mx_uri_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Credential refusals (SSO, Platform auth) for this many distinct users within the window,
    #: with no success in between, are a client-wide problem; fewer are those users' problem.
    mx_credential_failure_users: int = Field(default=3, ge=2, le=10_000)
    mx_credential_failure_window: timedelta = timedelta(minutes=10)

    # --- policy ------------------------------------------------------------------------------
    abandon_after: timedelta = timedelta(minutes=30)
    #: After an OAuth attempt that MX or the bank failed (PROVIDER_ERROR, SERVER_ERROR,
    #: UNKNOWN_ERROR), offer a new link this long after the attempt started.
    oauth_error_delay: timedelta = timedelta(hours=1)
    aggregation_freshness: timedelta = timedelta(hours=24)
    aggregate_after_reauth: bool = True
    app_redirect_url: str | None = None
    app_url_scheme: str | None = None
    allowed_redirect_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_reminders: int = Field(default=3, ge=1, le=20)
    reminder_schedule: Annotated[list[timedelta], NoDecode] = Field(
        default_factory=lambda: [timedelta(0), timedelta(hours=24), timedelta(hours=72)]
    )
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_cap: timedelta = timedelta(hours=1)
    #: JSON object overriding the connection_status → reason table, e.g. {"IMPEDED": "revoked"}.
    reason_overrides: dict[str, str | None] = Field(default_factory=dict)

    # --- scan and Celery ---------------------------------------------------------------------
    scan_interval: timedelta = timedelta(minutes=5)
    batch_size: int = Field(default=100, ge=1, le=5000)
    claim_lease: timedelta = timedelta(seconds=30)
    #: The lease of a page claimed and handed to the Celery queue, until a worker starts it
    #: (then REAUTH_CLAIM_LEASE with heartbeats). Long, because nobody can renew a page that
    #: waits in the queue: with the short lease a backlog longer than 30 s was re-claimed by
    #: the sweeper and queued twice. It bounds how late a page whose message was lost (a
    #: Redis restart without persistence) is taken again.
    claim_queued_lease: timedelta = timedelta(minutes=10)
    #: How often a live batch (and the relay) renews its leases; also the sweeper's period.
    claim_heartbeat: timedelta = timedelta(seconds=10)
    task_time_limit: int = Field(default=90, ge=5, le=86_400)
    visibility_timeout: int = Field(default=600, ge=30, le=7 * 86_400)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # --- notifications -----------------------------------------------------------------------
    notify_sink: NotifySink | None = None
    notify_stream: str = "reauth:notifications"
    notify_stream_maxlen: int = Field(default=1_000_000, ge=1, le=1_000_000_000)
    notify_file: str = "notifications.jsonl"
    notify_max_attempts: int = Field(default=10, ge=1, le=100)
    notify_batch_size: int = Field(default=500, ge=1, le=10_000)
    notify_lease: timedelta = timedelta(seconds=30)
    link_max_age: timedelta = timedelta(minutes=10)
    #: ``member`` (one message per member reminder) or ``user`` (one message per person).
    notify_grouping: NotifyGrouping = NotifyGrouping.MEMBER
    #: With ``user`` grouping: the longest a due message waits for its siblings, measured from
    #: the user's earliest due message. Below REAUTH_LINK_MAX_AGE (checked), or every held link
    #: would go stale and cost a second MX call.
    grouping_window: timedelta = timedelta(minutes=5)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    #: The deadline of one whole delivery (connect, send, answer), seconds.
    webhook_timeout: float = Field(default=10.0, ge=0.1, le=300, allow_inf_nan=False)
    notify_celery_task: str = "notifications.reauth_link"
    notify_celery_queue: str = "notifications"

    # --- reconnect links (reauth serve) ------------------------------------------------------
    #: Public base URL of `reauth serve`; reconnect_url = this + /r/<token>.
    public_url: str | None = None
    #: Keys for reconnect tokens (JSON list or comma-separated; the first signs, all verify).
    reconnect_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    reconnect_ttl: timedelta = timedelta(days=7)
    reconnect_clicks_per_hour: int = Field(default=10, ge=1, le=1000)
    link_mode: LinkMode = LinkMode.BOTH
    #: Exact origins whose oauthComplete postMessage the reconnect page accepts.
    mx_oauth_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "https://int-app.moneydesktop.com",
            "https://app.moneydesktop.com",
        ]
    )
    #: Where /oauth/complete sends people back after an APP flow (else a done page).
    app_return_url: str | None = None
    #: How long a reported success (with a valid state) pauses reminders awaiting confirmation.
    confirm_window: timedelta = timedelta(minutes=15)
    #: Optional: send people through the app's sign-in before the reconnect page.
    reconnect_signin_url: str | None = None

    # --- data lifecycle (reauth purge, the purge beat task) ---------------------------------
    #: How long rows are kept, per kind; 0 keeps them forever. Anything else is at least a day,
    #: so a bare number (read as seconds: "90") is refused instead of purging nearly everything.
    retention_attempts: timedelta = timedelta(days=90)
    retention_notifications_sent: timedelta = timedelta(days=90)
    retention_notifications_dead: timedelta = timedelta(days=90)
    retention_notifications_canceled: timedelta = timedelta(days=90)
    retention_ops_actions: timedelta = timedelta(days=365)
    retention_scan_runs: timedelta = timedelta(days=30)
    retention_clicks: timedelta = timedelta(days=90)
    #: Funnel events (one row per fact) and episode summaries (what `reauth report` reads: kept
    #: longer, so a year-on-year report works after the events are gone). docs/FUNNEL.md.
    retention_funnel_events: timedelta = timedelta(days=90)
    retention_episodes: timedelta = timedelta(days=400)
    #: Rows per DELETE (one short transaction each).
    retention_batch_size: int = Field(default=1000, ge=1, le=10_000)
    #: How often beat runs the purge.
    retention_interval: timedelta = timedelta(hours=1)

    @field_validator(
        "retention_attempts", "retention_notifications_sent", "retention_notifications_dead",
        "retention_notifications_canceled", "retention_ops_actions", "retention_scan_runs",
        "retention_clicks", "retention_funnel_events", "retention_episodes", "retention_interval",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _parse_lifecycle_durations(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name == "retention_interval":
            return _parse_duration(value, (timedelta(minutes=1), timedelta(days=1), ""))
        return _parse_duration(value, (timedelta(0), timedelta(days=3650), ""))

    @field_validator(
        "retention_attempts", "retention_notifications_sent", "retention_notifications_dead",
        "retention_notifications_canceled", "retention_ops_actions", "retention_scan_runs",
        "retention_clicks", "retention_funnel_events", "retention_episodes",
    )  # fmt: skip
    @classmethod
    def _check_retention(cls, value: timedelta) -> timedelta:
        if value and not timedelta(days=1) <= value <= timedelta(days=3650):
            raise ValueError("must be 0 (keep forever) or between 1d and 3650d (e.g. 90d)")
        return value

    @field_validator("retention_interval")
    @classmethod
    def _check_retention_interval(cls, value: timedelta) -> timedelta:
        return _check_duration(value, (timedelta(minutes=1), timedelta(days=1), ""))

    # --- the ops listener of reauth serve (GET /ops/report) ------------------------------
    #: Off unless the port and both credentials are set; never the public port.
    ops_port: int | None = Field(default=None, ge=1, le=65535)
    #: Loopback by default: put it behind your VPN or an SSH tunnel, not on the internet.
    ops_host: str = "127.0.0.1"
    ops_username: str | None = None
    ops_password: SecretStr | None = None

    @model_validator(mode="after")
    def _check_ops_listener(self) -> Settings:
        if (self.ops_username is None) != (self.ops_password is None):
            raise ValueError("REAUTH_OPS_USERNAME and REAUTH_OPS_PASSWORD: set both or neither")
        if self.ops_password is not None and len(self.ops_password.get_secret_value()) < 12:
            raise ValueError("REAUTH_OPS_PASSWORD: at least 12 characters")
        return self

    @property
    def ops_enabled(self) -> bool:
        """The ops listener runs: a port and both credentials are set."""
        return bool(self.ops_port and self.ops_username and self.ops_password)

    # --- MX webhooks (reauth serve: POST /mx/webhooks) ----------------------------------
    #: HTTP Basic credentials MX sends with each webhook; both unset: the route answers 404.
    mx_webhook_username: str | None = None
    mx_webhook_password: SecretStr | None = None
    #: Optional source allow-list (CIDRs); empty: any source with the right credentials.
    mx_webhook_allowed_ips: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Proxies (CIDRs) whose X-Forwarded-For is believed when checking the allow-list.
    mx_webhook_trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Identical bodies received within this window are stored once (MX retries for ~24 h).
    mx_webhook_dedupe_window: timedelta = timedelta(hours=48)
    #: Applied, ignored, rejected and failed events older than this are purged (0: never).
    retention_webhook_events: timedelta = timedelta(days=30)

    @field_validator("mx_webhook_allowed_ips", "mx_webhook_trusted_proxies", mode="before")
    @classmethod
    def _parse_webhook_networks(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("mx_webhook_allowed_ips", "mx_webhook_trusted_proxies")
    @classmethod
    def _check_webhook_networks(cls, value: list[str]) -> list[str]:
        for index, item in enumerate(value, start=1):
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"entry {index} is not an IP network (e.g. 10.0.0.0/8)") from None
        return [str(ipaddress.ip_network(item.strip(), strict=False)) for item in value]

    @field_validator("mx_webhook_dedupe_window", mode="before")
    @classmethod
    def _parse_webhook_window(cls, value: Any) -> Any:
        return _parse_duration(value, (timedelta(minutes=1), timedelta(days=30), ""))

    @field_validator("mx_webhook_dedupe_window")
    @classmethod
    def _check_webhook_window(cls, value: timedelta) -> timedelta:
        return _check_duration(value, (timedelta(minutes=1), timedelta(days=30), ""))

    @field_validator("retention_webhook_events", mode="before")
    @classmethod
    def _parse_webhook_retention(cls, value: Any) -> Any:
        return _parse_duration(value, (timedelta(0), timedelta(days=3650), ""))

    @field_validator("retention_webhook_events")
    @classmethod
    def _check_webhook_retention(cls, value: timedelta) -> timedelta:
        if value and not timedelta(days=1) <= value <= timedelta(days=3650):
            raise ValueError("must be 0 (keep forever) or between 1d and 3650d (e.g. 30d)")
        return value

    @model_validator(mode="after")
    def _check_webhook_credentials(self) -> Settings:
        if (self.mx_webhook_username is None) != (self.mx_webhook_password is None):
            raise ValueError(
                "REAUTH_MX_WEBHOOK_USERNAME and REAUTH_MX_WEBHOOK_PASSWORD: set both or neither"
            )
        if self.mx_webhook_password is not None and not self.mx_webhook_password.get_secret_value():
            raise ValueError("REAUTH_MX_WEBHOOK_PASSWORD must not be empty")
        return self

    @property
    def mx_webhooks_enabled(self) -> bool:
        return self.mx_webhook_username is not None and self.mx_webhook_password is not None

    # --- logging -----------------------------------------------------------------------------
    log_format: LogFormat | None = None
    log_level: str = "INFO"

    # --- single values -------------------------------------------------------------------------
    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(
                "not a database URL; expected e.g. sqlite:///reauth.db or "
                "postgresql+psycopg://user@host/dbname"
            ) from exc
        if url.get_backend_name() not in {"sqlite", "postgresql"}:
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}; use sqlite or postgresql"
            )
        # SQLAlchemy 2.1 defaults plain postgresql:// to psycopg 3; anything else is refused.
        if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
            raise ValueError(
                "PostgreSQL URLs must use the psycopg 3 driver: postgresql+psycopg://..."
            )
        return value

    @field_validator(
        "broker_url", "redis_url", "webhook_url", "app_redirect_url", "app_url_scheme",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_redis_url(value, (*_REDIS_SCHEMES, "unix"))

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        # Only Redis: the visibility timeout and the task settings are the Redis transport's.
        # kombu takes several URLs (fail-over, sentinels) separated by ";".
        if value is not None:
            for url in value.split(";"):
                _check_redis_url(url, _BROKER_SCHEMES)
        return value

    @field_validator("mx_base_url", "mx_sso_base_url")
    @classmethod
    def _check_mx_url(cls, value: str) -> str:
        return _check_http_url(value, base=True).rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, base=False)

    @field_validator("mx_client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        # It goes into MX URL paths: a space, a slash or a stray newline would change the path.
        if value and not _TOKEN_CHARS.fullmatch(value):
            raise ValueError("may only contain letters, digits and . _ ~ -")
        return value

    @field_validator("mx_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr) -> SecretStr:
        if re.search(r"[\x00-\x20\x7f]", value.get_secret_value()):
            raise ValueError("must not contain spaces or control characters (a stray newline?)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            webhook_signing_key(value.get_secret_value())
        return value

    @field_validator("app_url_scheme")
    @classmethod
    def _check_url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEME.fullmatch(value):
            raise ValueError("must be a URL scheme name: a letter, then letters, digits, + - .")
        return value

    @field_validator("app_redirect_url")
    @classmethod
    def _check_app_redirect_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_redirect_url(value)

    @field_validator(
        "allowed_redirect_prefixes",
        "reconnect_secrets",
        "mx_oauth_origins",
        "mx_uri_hosts",
        mode="before",
    )
    @classmethod
    def _parse_prefixes(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("reconnect_secrets")
    @classmethod
    def _check_reconnect_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(v.get_secret_value().encode()) < 32 for v in value):
            raise ValueError("each key must be at least 32 bytes (e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("public_url", "app_return_url", "reconnect_signin_url")
    @classmethod
    def _check_page_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL with a host")
        return value.rstrip("/")

    @field_validator("mx_oauth_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            parts = urlsplit(origin)
            if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path:
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path)")
        return value

    @field_validator("allowed_redirect_prefixes")
    @classmethod
    def _check_prefixes(cls, value: list[str]) -> list[str]:
        for index, prefix in enumerate(value, start=1):
            try:
                _check_redirect_url(prefix)
            except ValueError as exc:
                raise ValueError(f"prefix {index}: {exc}") from None
        return value

    @field_validator("mx_uri_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for raw in value:
            # "*.mx.com" and ".mx.com" are accepted spellings of "mx.com and its subdomains".
            host = raw.strip().lower().removeprefix("*.").removeprefix(".")
            if not _HOST_RE.fullmatch(host):
                raise ValueError(f"{raw!r} is not a host name (e.g. int-app.moneydesktop.com)")
            hosts.append(host)
        return hosts

    @field_validator("reminder_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: Any) -> Any:
        items = _split_list(value)
        if not isinstance(items, list):
            return items
        parsed = []
        for index, item in enumerate(items, start=1):
            try:
                parsed.append(_parse_duration(item, _REMINDER_RANGE))
            except ValueError as exc:
                raise ValueError(f"offset {index}: {exc}") from None
        return parsed

    @field_validator(*_DURATION_RANGES, mode="before")
    @classmethod
    def _parse_durations(cls, value: Any, info: ValidationInfo) -> Any:
        return _parse_duration(value, _DURATION_RANGES[str(info.field_name)])

    @field_validator(*_DURATION_RANGES)
    @classmethod
    def _check_durations(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        # Again after parsing: ISO 8601 text and timedelta values skip the parser's check.
        return _check_duration(value, _DURATION_RANGES[str(info.field_name)])

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        # A lease must survive two missed heartbeats, or a slow renewal loses live work.
        for name in ("claim_lease", "notify_lease"):
            if getattr(self, name) < 3 * self.claim_heartbeat:
                raise ValueError(
                    f"REAUTH_{name.upper()} must be at least 3 x REAUTH_CLAIM_HEARTBEAT "
                    f"({getattr(self, name).total_seconds():g}s < 3 x "
                    f"{self.claim_heartbeat.total_seconds():g}s)"
                )
        if self.claim_queued_lease < self.claim_lease:
            if "claim_queued_lease" not in self.model_fields_set:
                # Only REAUTH_CLAIM_LEASE was raised: a queued page keeps at least that
                # (settings are frozen once built; this is still building them).
                object.__setattr__(self, "claim_queued_lease", self.claim_lease)
                return self
            raise ValueError(
                "REAUTH_CLAIM_QUEUED_LEASE must be at least REAUTH_CLAIM_LEASE "
                f"({self.claim_queued_lease.total_seconds():g}s < "
                f"{self.claim_lease.total_seconds():g}s)"
            )
        return self

    @field_validator("reminder_schedule")
    @classmethod
    def _check_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if not value:
            raise ValueError("needs at least one offset (e.g. 0,86400)")
        for index, offset in enumerate(value, start=1):
            try:
                _check_duration(offset, _REMINDER_RANGE)
            except ValueError as exc:
                raise ValueError(f"offset {index}: {exc}") from None
        # Strictly: two equal offsets would send two reminders at the same moment.
        if any(b <= a for a, b in pairwise(value)):
            raise ValueError("offsets must be non-negative and in strictly increasing order")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("reason_overrides")
    @classmethod
    def _check_overrides(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        allowed = {"revoked", "expired", "abandoned", None}
        bad = {k: v for k, v in value.items() if v not in allowed}
        if bad:
            raise ValueError(f"reasons must be revoked, expired, abandoned or null; got {bad}")
        return {k.upper(): v for k, v in value.items()}

    # --- relations between settings ----------------------------------------------------------
    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        """Settings that depend on one another; every broken relation is reported at once."""
        problems = [*self._insecure_urls(), *self._redirects(), *self._relations()]
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _insecure_urls(self) -> list[str]:
        if self.allow_insecure_urls:
            return []
        urls: dict[str, list[str | None]] = {
            "REAUTH_MX_BASE_URL": [self.mx_base_url],
            "REAUTH_MX_SSO_BASE_URL": [self.mx_sso_base_url],
            "REAUTH_WEBHOOK_URL": [self.webhook_url],
            "REAUTH_APP_REDIRECT_URL": [self.app_redirect_url],
            "REAUTH_ALLOWED_REDIRECT_PREFIXES": list(self.allowed_redirect_prefixes),
        }
        return [
            f"{name}: plain http:// is allowed only with REAUTH_ALLOW_INSECURE_URLS=true "
            "(for the sandbox, the demo and tests); use https://"
            for name, values in urls.items()
            if any(v is not None and v.lower().startswith("http://") for v in values)
        ]

    def _redirects(self) -> list[str]:
        if self.app_redirect_url is None or redirect_allowed(
            self.app_redirect_url, self.allowed_redirect_prefixes
        ):
            return []
        return [
            "REAUTH_APP_REDIRECT_URL: not under any prefix in REAUTH_ALLOWED_REDIRECT_PREFIXES "
            "(client_redirect_url must be allow-listed; compared after normalising the path)"
        ]

    def _relations(self) -> list[str]:
        problems = []
        if self.mx_platform_path_ids is PathIds.PARTNER and (
            self.mx_api is not MxApi.PLATFORM or self.mx_api_version is not MxApiVersion.V20250224
        ):
            problems.append(
                "REAUTH_MX_PLATFORM_PATH_IDS=partner needs REAUTH_MX_API=platform and "
                "REAUTH_MX_API_VERSION=v20250224 (only that version takes partner ids in paths)"
            )
        if self.notify_sink is NotifySink.WEBHOOK and (
            self.webhook_url is None or self.webhook_secret is None
        ):
            problems.append(
                "REAUTH_NOTIFY_SINK=webhook needs REAUTH_WEBHOOK_URL and REAUTH_WEBHOOK_SECRET"
            )
        if self.notify_sink is NotifySink.REDIS_STREAM and self.redis_url is None:
            problems.append("REAUTH_NOTIFY_SINK=redis-stream needs REAUTH_REDIS_URL")
        if (
            self.public_url
            and self.public_url.startswith("http://")
            and not self.allow_insecure_urls
        ):
            problems.append(
                "REAUTH_PUBLIC_URL must be https (http only with REAUTH_ALLOW_INSECURE_URLS)"
            )
        if self.link_mode is LinkMode.RECONNECT and not self.reconnect_enabled:
            problems.append(
                "REAUTH_LINK_MODE=reconnect needs REAUTH_PUBLIC_URL and REAUTH_RECONNECT_SECRETS"
            )
        if self.task_time_limit >= self.visibility_timeout:
            problems.append(
                "REAUTH_TASK_TIME_LIMIT must be below REAUTH_VISIBILITY_TIMEOUT, or Redis "
                "redelivers running tasks"
            )
        if self.mx_timeout >= self.task_time_limit:
            problems.append(
                "REAUTH_MX_TIMEOUT must be below REAUTH_TASK_TIME_LIMIT, or one slow MX call "
                "outlives the task that made it"
            )
        # Leases are renewed by a heartbeat while a batch (or a relay delivery) is alive, so
        # they need to outlast a few heartbeats (checked below), not the calls themselves.
        if self.backoff_base > self.backoff_cap:
            problems.append("REAUTH_BACKOFF_BASE must not be above REAUTH_BACKOFF_CAP")
        if (
            self.notify_grouping is NotifyGrouping.USER
            and self.link_mode is LinkMode.BOTH
            and self.grouping_window >= self.link_max_age
        ):
            problems.append(
                "REAUTH_GROUPING_WINDOW must be below REAUTH_LINK_MAX_AGE with "
                "REAUTH_NOTIFY_GROUPING=user, or every held link goes stale before it is sent "
                f"({_format_duration(self.grouping_window)} >= "
                f"{_format_duration(self.link_max_age)})"
            )
        return problems

    # --- derived -----------------------------------------------------------------------------
    @property
    def effective_notify_sink(self) -> NotifySink:
        """The sink in use: explicit, else the Redis stream with Redis configured, else a file."""
        if self.notify_sink is not None:
            return self.notify_sink
        return NotifySink.REDIS_STREAM if self.redis_url else NotifySink.FILE

    @property
    def reconnect_keys(self) -> list[bytes]:
        """Token keys, signing key first."""
        return [s.get_secret_value().encode() for s in self.reconnect_secrets]

    @property
    def reconnect_enabled(self) -> bool:
        """reconnect_url is put into messages only with a public URL and a key."""
        return bool(self.public_url and self.reconnect_secrets)

    def require_mx_credentials(self) -> None:
        """Raise :class:`ConfigError` unless the MX client id and API key are both set.

        Settings load without them (``status``, ``db``, ``members import`` never call MX); an
        entry point that will call MX asks first, so the operator gets one message and exit 2
        instead of a 401 per member.
        """
        missing = [
            name
            for name, value in (
                ("REAUTH_MX_CLIENT_ID", self.mx_client_id),
                ("REAUTH_MX_API_KEY", self.mx_api_key.get_secret_value()),
            )
            if not value
        ]
        if missing:
            host = urlsplit(self.mx_base_url).hostname
            raise ConfigError(
                f"invalid configuration:\n  {' and '.join(missing)} must be set: "
                f"every call to MX ({host}) needs the client id and the API key"
            )


def setting_names() -> frozenset[str]:
    """Every environment variable that is a setting (``REAUTH_DATABASE_URL`` ...)."""
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


# --- loading -------------------------------------------------------------------------------------

#: A DNS host name: labels of letters, digits and inner hyphens, at least two of them.
_HOST_RE = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?"
)


def insecure_mx_url(settings: Settings) -> str | None:
    """Why the MX base URLs are not allowed, or None.

    Plain http would send the API key and session tokens in clear text, so it is refused unless
    REAUTH_ALLOW_INSECURE_URLS is on (the sandbox, the demo and the tests). Also called by the
    MX client, because ``model_copy(update=...)`` skips validation.
    """
    if settings.allow_insecure_urls:
        return None
    for env, url in (
        ("REAUTH_MX_BASE_URL", settings.mx_base_url),
        ("REAUTH_MX_SSO_BASE_URL", settings.mx_sso_base_url),
    ):
        if not url.lower().startswith("https://"):
            return (
                f"{env}: plain http needs REAUTH_ALLOW_INSECURE_URLS=true (sandbox and tests only)"
            )
    return None


def _format_source_error(exc: SettingsError) -> str:
    match = re.search(r'field "(\w+)"', str(exc))
    name = ENV_PREFIX + match.group(1).upper() if match else "a REAUTH_ variable"
    return f"invalid configuration:\n  {name}: not valid JSON"


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            name = ENV_PREFIX + loc[0].upper()
            lines.append(f"{name}: {msg}")
        else:
            lines.append(msg)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _env_files(overrides: Mapping[str, Any]) -> list[Path]:
    """The .env files pydantic-settings will read (``_env_file`` may override the default)."""
    files: Any = overrides.get("_env_file", Settings.model_config.get("env_file"))
    if files is None:
        return []
    if isinstance(files, str | os.PathLike):
        return [Path(files).expanduser()]
    return [Path(f).expanduser() for f in files]


def _read_env_file(path: Path) -> dict[str, str | None]:
    """The variables of one .env file; ConfigError if it cannot be read or is not UTF-8.

    pydantic-settings raised UnicodeDecodeError (a traceback) for a non-UTF-8 byte; the message
    here names the file and the line, and never the content.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration:\n  {path}: cannot be read ({exc.strerror})"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"invalid configuration:\n  {path}: not valid UTF-8 (line {line}); save it as UTF-8"
        ) from None
    return dotenv_values(stream=io.StringIO(text))


def _check_text(variables: Mapping[str, str | None], source: str) -> None:
    """Refuse values with undecodable bytes (they arrive as surrogates and fail much later)."""
    for name, value in variables.items():
        if name.upper().startswith(ENV_PREFIX) and value and re.search("[\udc80-\udcff]", value):
            raise ConfigError(
                f"invalid configuration:\n  {name.upper()}: not valid UTF-8 (in {source})"
            )


def _warn_unknown(names: Iterable[str], source: str) -> None:
    """Log each ``REAUTH_`` name that is no setting, with the closest one (typos are silent
    otherwise: the setting keeps its default). A log line, not a Python warning, because
    warnings are errors in the tests; the value is never logged."""
    known = setting_names()
    for name in sorted({n.upper() for n in names if n.upper().startswith(ENV_PREFIX)}):
        if name in known or name.startswith(NOT_SETTINGS_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        log.warning("%s (in %s) is not a setting and is ignored%s", name, source, hint)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``overrides``), or raise :class:`ConfigError`.

    Before pydantic reads them, the .env files are checked to be UTF-8, values are checked for
    undecodable bytes, and unknown ``REAUTH_`` names are logged at warning level.
    """
    files = {path: _read_env_file(path) for path in _env_files(overrides)}
    _check_text(os.environ, "the environment")
    _warn_unknown(os.environ, "the environment")
    for path, variables in files.items():
        _check_text(variables, str(path))
        _warn_unknown(variables, str(path))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    except SettingsError as exc:
        # A JSON-typed variable (e.g. REAUTH_REASON_OVERRIDES=not json) fails in the settings
        # source, before validation, as SettingsError: it escaped as a traceback with exit 1
        # (found by tests/reliability/test_bad_input.py).
        raise ConfigError(_format_source_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return load_settings()
