"""The sandbox's settings object: credentials, member source, faults, timing.

One mutable dataclass, shared by reference: set it at construction, from CLI flags, or at
runtime through ``PUT /_sandbox/config`` (or by assigning attributes on the in-process handle).
Every fault is a probability per request; one seeded ``random.Random`` draws them, so a run with
the same seed and the same request order injects the same faults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Default credentials the sandbox accepts (documented in docs/SANDBOX.md).
DEFAULT_CLIENT_ID = "sandbox-client"
DEFAULT_API_KEY = "sandbox-key"

#: Endpoint names used by ``fault_endpoints`` and in the request log.
ENDPOINTS = ("sso", "sessions", "nexus", "platform")

#: Fault names in the order their probabilities are stacked on one draw.
FAULTS = (
    "rate_429",
    "rate_429_no_retry_after",
    "rate_500",
    "rate_503",
    "rate_hang",
    "rate_reset",
    "rate_malformed",
    "rate_html",
    "rate_oversize",
)

ERROR_ENVELOPES = ("error-object", "error-string", "top-level")

#: Platform API versions the sandbox knows, by ``Accept-Version``.
PLATFORM_VERSIONS = ("v20250224", "v20111101")


@dataclass
class SandboxConfig:
    """Everything that changes how the sandbox answers. All rates are in [0, 1]; sum <= 1."""

    client_id: str = DEFAULT_CLIENT_ID
    api_key: str = DEFAULT_API_KEY
    #: JSON file of members (see docs/SANDBOX.md); wins over the database when both are set.
    members_file: str | None = None
    #: SQLAlchemy URL of the project's database: members are the ``members`` table rows.
    members_db_url: str | None = None
    #: Host and scheme of generated URIs (MX's integration host by default).
    uri_base: str = "https://int-app.moneydesktop.com"
    #: Host and scheme of URIs for members whose guid contains FOREIGNURI (not an MX domain).
    foreign_uri_base: str = "https://auth.examplebank.test"
    #: Platform API versions accepted in ``Accept-Version`` (each with its own ``Accept``);
    #: anything else is 406, as MX answers since 2026-08-12.
    platform_versions: list[str] = field(default_factory=lambda: list(PLATFORM_VERSIONS))
    #: False: the SSO API answers 404 to every token read ("Nexus not enabled").
    nexus_enabled: bool = True
    #: What the SSO API answers for a user id containing NOUSER (404, 401 or 403).
    sso_user_failure_status: int = 404
    #: connection_status of on-the-fly members (read endpoints).
    default_connection_status: str = "DENIED"

    latency: float = 0.0
    jitter: float = 0.0
    rate_429: float = 0.0
    rate_429_no_retry_after: float = 0.0
    retry_after_seconds: int = 1
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_hang: float = 0.0
    hang_seconds: float = 60.0
    rate_reset: float = 0.0
    rate_malformed: float = 0.0
    rate_html: float = 0.0
    html_status: int = 502
    rate_oversize: float = 0.0
    oversize_bytes: int = 10 * 1024 * 1024
    #: Every Nth Nexus OAuth call finds its session expired (401, code 4011). 0 = never.
    expire_session_every: int = 0
    #: A Nexus session serves this many calls, then expires (401, code 4011). 0 = no limit.
    session_max_uses: int = 0
    session_ttl_seconds: float = 1800.0
    api_token_ttl_seconds: float = 600.0
    #: How error bodies are shaped (MX does not document it): see docs/SANDBOX.md.
    error_envelope: str = "error-object"
    fault_endpoints: list[str] = field(default_factory=lambda: list(ENDPOINTS))
    seed: int = 0
    #: Where member state changes are posted as MX webhooks ("" = nowhere); HTTP Basic.
    webhook_url: str = ""
    webhook_username: str = "mx"
    webhook_password: str = ""
    #: Retries of a failed delivery, the first after this many seconds, doubling.
    webhook_retries: int = 3
    webhook_retry_seconds: float = 0.5
    #: Every webhook is sent this many extra times (MX may deliver an event more than once).
    webhook_duplicates: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        total = 0.0
        for name in FAULTS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        for name in ("latency", "jitter", "hang_seconds", "session_ttl_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if min(self.webhook_retries, self.webhook_duplicates) < 0 or self.webhook_retry_seconds < 0:
            raise ValueError("webhook_retries, webhook_duplicates and webhook_retry_seconds must "
                             "not be negative")  # fmt: skip
        if self.expire_session_every < 0 or self.oversize_bytes < 0 or self.session_max_uses < 0:
            raise ValueError(
                "expire_session_every, session_max_uses and oversize_bytes must not be negative"
            )
        unknown_versions = set(self.platform_versions) - set(PLATFORM_VERSIONS)
        if unknown_versions:
            raise ValueError(
                f"unknown platform_versions {sorted(unknown_versions)}; use {PLATFORM_VERSIONS}"
            )
        if self.sso_user_failure_status not in (401, 403, 404):
            raise ValueError("sso_user_failure_status must be 401, 403 or 404")
        if self.error_envelope not in ERROR_ENVELOPES:
            raise ValueError(f"error_envelope must be one of {', '.join(ERROR_ENVELOPES)}")
        unknown = set(self.fault_endpoints) - set(ENDPOINTS)
        if unknown:
            raise ValueError(f"unknown fault_endpoints {sorted(unknown)}; use {ENDPOINTS}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["api_key"] = "***"  # the admin endpoint is unauthenticated; never echo the key
        data["webhook_password"] = "***" if self.webhook_password else ""
        return data

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update atomically (all or nothing), with type checks.

        Raises:
            ValueError: unknown field, wrong type, or the result fails :meth:`validate`.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        candidate = dataclasses.replace(self)
        for name, value in changes.items():
            setattr(candidate, name, _coerce(name, getattr(self, name), value))
        candidate.validate()
        for name in changes:
            setattr(self, name, getattr(candidate, name))


def _coerce(name: str, current: Any, value: Any) -> Any:
    if name in {"members_file", "members_db_url"}:
        if value is None or isinstance(value, str):
            return value or None
        raise ValueError(f"{name} must be a string or null")
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false")
    if isinstance(value, bool):
        raise ValueError(f"{name}: booleans are not accepted")
    if isinstance(current, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(current, int) and isinstance(value, int):
        return value
    if isinstance(current, str) and isinstance(value, str):
        return value
    if isinstance(current, list) and isinstance(value, list):
        return [str(v) for v in value]
    raise ValueError(f"{name} must be a {type(current).__name__}")
