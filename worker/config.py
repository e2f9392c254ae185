"""Settings: the one place that reads the environment.

Every setting is an environment variable with the ``REAUTH_`` prefix (also read from a ``.env``
file in the working directory). The names are a public contract: the README, ``.env.example``
and ``docker-compose.yml`` use them, and a test checks that all three agree with this class.

Invalid values never produce a traceback for an operator: :func:`load_settings` turns pydantic's
validation error into :class:`worker.errors.ConfigError`, whose message names each variable and
what is wrong with it, and the CLI exits with code 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.errors import ConfigError

#: Prefix of every environment variable this service reads.
ENV_PREFIX = "REAUTH_"


class MxApi(StrEnum):
    """Which MX API generates the OAuth window URI."""

    NEXUS = "nexus"
    PLATFORM = "platform"


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


class NotifySink(StrEnum):
    REDIS_STREAM = "redis-stream"
    WEBHOOK = "webhook"
    CELERY = "celery"
    FILE = "file"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    """Accept seconds ("1800", 1800), a number with a unit ("30m", "24h", "2d") or ISO 8601."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            pass
        if text[:-1] and text[-1] in _DURATION_UNITS:
            try:
                return timedelta(seconds=float(text[:-1]) * _DURATION_UNITS[text[-1]])
            except ValueError:
                pass
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


class Settings(BaseSettings):
    """All runtime configuration. Frozen: build a new one with ``model_copy(update=...)``."""

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
    mx_timeout: float = Field(default=10.0, gt=0, le=300)
    mx_max_concurrency: int = Field(default=64, ge=1, le=2000)
    #: Bounded: a tiny rate (0.01/s) once pushed the shared limiter's next slot minutes ahead.
    mx_rate_limit_per_second: float = Field(default=200.0, ge=1.0, le=1_000_000.0)
    mx_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
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
    claim_lease: timedelta = timedelta(minutes=2)
    task_time_limit: int = Field(default=90, ge=5)
    visibility_timeout: int = Field(default=600, ge=30)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    # --- notifications -----------------------------------------------------------------------
    notify_sink: NotifySink | None = None
    notify_stream: str = "reauth:notifications"
    notify_stream_maxlen: int = Field(default=1_000_000, ge=1)
    notify_file: str = "notifications.jsonl"
    notify_max_attempts: int = Field(default=10, ge=1)
    notify_batch_size: int = Field(default=500, ge=1)
    notify_lease: timedelta = timedelta(minutes=2)
    link_max_age: timedelta = timedelta(minutes=10)
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout: float = Field(default=10.0, gt=0)
    notify_celery_task: str = "notifications.reauth_link"
    notify_celery_queue: str = "notifications"

    # --- logging -----------------------------------------------------------------------------
    log_format: LogFormat | None = None
    log_level: str = "INFO"

    # ------------------------------------------------------------------------------------------
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

    @field_validator("broker_url", "redis_url", "webhook_url", "app_redirect_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("mx_base_url", "mx_sso_base_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("allowed_redirect_prefixes", "mx_uri_hosts", mode="before")
    @classmethod
    def _parse_prefixes(cls, value: Any) -> Any:
        return _split_list(value)

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
        return [_parse_duration(v) for v in items] if isinstance(items, list) else items

    @field_validator(
        "mx_session_margin", "mx_credential_failure_window", "oauth_error_delay", "abandon_after",
        "aggregation_freshness", "backoff_base", "backoff_cap", "scan_interval", "claim_lease",
        "notify_lease", "link_max_age",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return _parse_duration(value)

    @field_validator("reminder_schedule")
    @classmethod
    def _check_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if not value:
            raise ValueError("needs at least one offset (e.g. 0,86400)")
        if any(b < a for a, b in pairwise(value)) or value[0] < timedelta(0):
            raise ValueError("offsets must be non-negative and in increasing order")
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

    @model_validator(mode="after")
    def _check_mx(self) -> Settings:
        problem = insecure_mx_url(self)
        if problem is not None:
            raise ValueError(problem)
        if self.mx_platform_path_ids is PathIds.PARTNER and (
            self.mx_api is not MxApi.PLATFORM or self.mx_api_version is not MxApiVersion.V20250224
        ):
            raise ValueError(
                "REAUTH_MX_PLATFORM_PATH_IDS=partner needs REAUTH_MX_API=platform and "
                "REAUTH_MX_API_VERSION=v20250224 (only that version takes partner ids in paths)"
            )
        if self.mx_credential_failure_window <= timedelta(0):
            raise ValueError("REAUTH_MX_CREDENTIAL_FAILURE_WINDOW: must be positive")
        return self

    @model_validator(mode="after")
    def _check_redirects(self) -> Settings:
        if self.app_redirect_url is not None:
            if not self.app_redirect_url.startswith(("http://", "https://")) and "://" not in (
                self.app_redirect_url
            ):
                raise ValueError("REAUTH_APP_REDIRECT_URL: must be an absolute URL")
            if not redirect_allowed(self.app_redirect_url, self.allowed_redirect_prefixes):
                raise ValueError(
                    "REAUTH_APP_REDIRECT_URL: not under any prefix in "
                    "REAUTH_ALLOWED_REDIRECT_PREFIXES (client_redirect_url must be allow-listed)"
                )
        if self.notify_sink is NotifySink.WEBHOOK and (
            self.webhook_url is None or self.webhook_secret is None
        ):
            raise ValueError(
                "REAUTH_NOTIFY_SINK=webhook needs REAUTH_WEBHOOK_URL and REAUTH_WEBHOOK_SECRET"
            )
        if self.notify_sink is NotifySink.REDIS_STREAM and self.redis_url is None:
            raise ValueError("REAUTH_NOTIFY_SINK=redis-stream needs REAUTH_REDIS_URL")
        if self.task_time_limit >= self.visibility_timeout:
            raise ValueError(
                "REAUTH_TASK_TIME_LIMIT must be below REAUTH_VISIBILITY_TIMEOUT, or Redis "
                "redelivers running tasks"
            )
        return self

    # --- derived -----------------------------------------------------------------------------
    @property
    def effective_notify_sink(self) -> NotifySink:
        """The sink in use: explicit, else the Redis stream with Redis configured, else a file."""
        if self.notify_sink is not None:
            return self.notify_sink
        return NotifySink.REDIS_STREAM if self.redis_url else NotifySink.FILE

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")


def redirect_allowed(url: str, prefixes: Iterable[str]) -> bool:
    """True when ``url`` is under one of the allow-listed ``prefixes``, matched at a boundary.

    A plain ``startswith`` let the prefix ``https://app.example.com`` allow
    ``https://app.example.com.evil.net/cb`` and ``https://app.example.com@evil.net/cb``
    (found by tests/reliability/test_secrets.py): the match must end the prefix at ``/``, ``?``
    or ``#``, or the prefix must itself end with one of them, or the URL must equal it.
    """
    for prefix in prefixes:
        if not prefix or not url.startswith(prefix):
            continue
        rest = url[len(prefix) :]
        if not rest or prefix.endswith(_URL_BOUNDARIES) or rest.startswith(_URL_BOUNDARIES):
            return True
    return False


_URL_BOUNDARIES = ("/", "?", "#")

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


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``overrides``), or raise :class:`ConfigError`."""
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
