"""The pure core: who needs re-authentication, with which parameters, and what happens next.

No database, HTTP or Celery here: frozen dataclasses and enums in, decisions out, ``now`` passed
in. The shells (repository, MX client, tasks, CLI) load a :class:`MemberSnapshot`, ask
:func:`decide`, carry out the MX call if told to, and store what :func:`after_outcome` returns.

Lifecycle of a member (``reauth_state``)::

    idle ──reason appears──> pending ──URI generated──> awaiting_user ──next reminder due──> pending
      ^                        │ transient: backoff, retry (≤ max_attempts) │
      │                        └──────────> gave_up                         │
      └──── OAuth success / no longer eligible (episode ends) <─────────────┘
    not_oauth_capable, gone: terminal (MX said so); only an explicit forced rerun re-opens them.

An *episode* starts when a member enters a re-auth reason; within it at most
``effective_reminders`` notifications are sent, reminder ``r`` being due at
``episode_started_at + reminder_schedule[r-1]``. Each (member, episode, reminder) is notified at
most once: the outbox's unique idempotency key enforces it, and this module never asks for a
reminder that :attr:`MemberSnapshot.reminders_sent` says is done.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from worker.core.backoff import backoff_delay

if TYPE_CHECKING:
    from worker.config import Settings


class Reason(StrEnum):
    REVOKED = "revoked"
    EXPIRED = "expired"
    ABANDONED = "abandoned"
    #: The person tried OAuth and MX or the bank failed (PROVIDER_ERROR, SERVER_ERROR,
    #: UNKNOWN_ERROR): a new link after REAUTH_OAUTH_ERROR_DELAY. Not an abandonment.
    OAUTH_FAILED = "oauth_failed"


class Channel(StrEnum):
    BROWSER = "BROWSER"
    APP = "APP"


class SkipWhy(StrEnum):
    AGGREGATION_IN_PROGRESS = "aggregation_in_progress"
    RECENTLY_AGGREGATED = "recently_aggregated"
    DISABLED_BY_CONFIG = "disabled_by_config"
    STALE_DATA = "stale_data"


class State(StrEnum):
    IDLE = "idle"
    PENDING = "pending"
    AWAITING_USER = "awaiting_user"
    GAVE_UP = "gave_up"
    NOT_OAUTH_CAPABLE = "not_oauth_capable"
    GONE = "gone"


#: States in which an episode is open.
IN_EPISODE = frozenset({State.PENDING, State.AWAITING_USER, State.GAVE_UP})
#: States MX put the member in; nothing is generated for them.
TERMINAL = frozenset({State.NOT_OAUTH_CAPABLE, State.GONE})


def closes_episode(before: State, after: State) -> bool:
    """Whether a change from ``before`` to ``after`` ends an open episode.

    The one rule every writer of member state follows: when it holds, the member's claim is
    revoked and its undelivered reminders are canceled (see ``worker.store.decisions``).
    """
    return before in IN_EPISODE and after not in IN_EPISODE


class Basis(StrEnum):
    """Where a decision in the tables below comes from (docs/MX.md cites the sources)."""

    #: MX's own words say the person must re-authenticate, or that they cannot by OAuth.
    MX = "mx"
    #: Our reading of MX's words for an OAuth member; MX publishes no such mapping.
    INFERENCE = "inference"


@dataclass(frozen=True)
class StatusRule:
    """What one MX ``connection_status`` means and what this service does about it."""

    status: str
    #: MX's ``connection_status_id``.
    id: int
    #: What MX says the status means (MX's docs or the Connect widget's user message).
    meaning: str
    #: The default reason (``None``: no link), before REAUTH_REASON_OVERRIDES.
    reason: Reason | None
    why: str
    basis: Basis


_ABANDON_NOTE = (
    "no link by status; abandoned once an OAuth start is older than REAUTH_ABANDON_AFTER"
)

#: All 22 MX connection statuses (mx-api.md section 4), in id order. docs/MX.md shows this table
#: and tests/core/test_policy.py checks that the two agree.
STATUS_TABLE: tuple[StatusRule, ...] = (
    StatusRule("CREATED", 0, "new, not aggregated yet", None, _ABANDON_NOTE, Basis.INFERENCE),
    StatusRule("PREVENTED", 1, "3 failed attempts in a row; the user must re-enter "
               "credentials", Reason.REVOKED, "MX asks the user to authenticate again",
               Basis.MX),
    StatusRule("DENIED", 2, "invalid credentials", Reason.REVOKED, "for an OAuth member, the "
               "bank no longer accepts the token", Basis.INFERENCE),
    StatusRule("CHALLENGED", 3, "waiting for MFA; not an error", None, "an MFA step, not an "
               "OAuth re-authentication; it becomes EXPIRED if left", Basis.MX),
    StatusRule("REJECTED", 4, "MFA answered wrongly", None, "an MFA answer, which a new OAuth "
               "window does not fix (the widget groups it with MFA)", Basis.INFERENCE),
    StatusRule("LOCKED", 5, "the bank blocks authentication; the user must visit the bank",
               None, "the fix is at the bank, not in an OAuth window", Basis.MX),
    StatusRule("CONNECTED", 6, "working", None, "nothing to do; ends an open episode", Basis.MX),
    StatusRule("IMPEDED", 7, "the user must take an action at the bank", None, "MX does not "
               "document it as an OAuth re-authentication case; map it with "
               "REAUTH_REASON_OVERRIDES if your banks need it", Basis.MX),
    StatusRule("RECONNECTED", 8, "reconnecting (processing)", None, "in progress",
               Basis.MX),
    StatusRule("DEGRADED", 9, "repeated failures or an upgrade in progress", None, "MX's or "
               "the bank's problem, not the user's", Basis.INFERENCE),
    StatusRule("DISCONNECTED", 10, "the bank is not updating data", None, "the bank's "
               "problem, not the user's", Basis.MX),
    StatusRule("DISCONTINUED", 11, "the bank is no longer supported", None, "no link can "
               "help", Basis.MX),
    StatusRule("CLOSED", 12, "the account is closed", None, "no link can help", Basis.MX),
    StatusRule("DELAYED", 13, "slower than usual", None, "wait", Basis.MX),
    StatusRule("FAILED", 14, "a problem validating credentials", None, "MX's side; not "
               "documented as needing the user", Basis.INFERENCE),
    StatusRule("UPDATED", 15, "updated (processing)", None, "in progress", Basis.MX),
    StatusRule("DISABLED", 16, "aggregation disabled or paused", None, "a setting, not an "
               "authentication problem", Basis.MX),
    StatusRule("IMPORTED", 17, "you must re-authenticate before your data can be imported",
               Reason.REVOKED, "MX asks the user to authenticate again", Basis.MX),
    StatusRule("RESUMED", 18, "resumed (processing)", None, "in progress", Basis.MX),
    StatusRule("EXPIRED", 19, "answers not given in time", Reason.EXPIRED, "for an OAuth "
               "member, the token expired (MX's OAuth docs name expiry as a reason to ask "
               "for a new window)", Basis.INFERENCE),
    StatusRule("IMPAIRED", 20, "you must re-authenticate before your data can be imported",
               Reason.REVOKED, "MX asks the user to authenticate again", Basis.MX),
    StatusRule("PENDING", 21, "not documented", None, _ABANDON_NOTE, Basis.INFERENCE),
)  # fmt: skip

#: Every connection_status name MX documents.
CONNECTION_STATUSES = frozenset(rule.status for rule in STATUS_TABLE)
#: MX connection statuses that mean "send the user through OAuth again" (the table above).
#: Overridable with REAUTH_REASON_OVERRIDES.
DEFAULT_REASON_TABLE: Mapping[str, Reason] = MappingProxyType(
    {rule.status: rule.reason for rule in STATUS_TABLE if rule.reason is not None}
)

#: MX's OAuth ``auth_status`` values (Connect widget, "matches the atlas proto for OauthState").
OAUTH_STATUSES = frozenset({"UNKNOWN", "PENDING", "SUCCESS", "ERRORED"})
#: MX's OAuth ``error_reason`` values, with what each means for this service.
OAUTH_ERROR_TABLE: Mapping[str, str] = MappingProxyType(
    {
        "UNKNOWN_ERROR": "failed for a reason MX does not name: a new link after "
        "REAUTH_OAUTH_ERROR_DELAY (the person tried; not an abandonment)",
        "CANCELLED": "the person left the OAuth window: abandoned",
        "DENIED": "the person could not authenticate at the bank: no link",
        "IMPEDED": "action needed at the bank: no link",
        "PROVIDER_ERROR": "the bank failed: a new link after REAUTH_OAUTH_ERROR_DELAY",
        "SERVER_ERROR": "MX failed: a new link after REAUTH_OAUTH_ERROR_DELAY",
        "SESSION_ERROR": "the OAuth session ran out: abandoned",
    }
)
OAUTH_ERROR_REASONS = frozenset(OAUTH_ERROR_TABLE)
#: OAuth errors that mean the user walked away rather than being refused.
ABANDON_ERROR_REASONS = frozenset({"CANCELLED", "SESSION_ERROR"})
#: OAuth errors where the person tried and MX or the bank failed: offer a new link later.
RETRY_ERROR_REASONS = frozenset({"PROVIDER_ERROR", "SERVER_ERROR", "UNKNOWN_ERROR"})


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's knobs, copied from settings so the core never reads the environment."""

    abandon_after: timedelta = timedelta(minutes=30)
    oauth_error_delay: timedelta = timedelta(hours=1)
    aggregation_freshness: timedelta = timedelta(hours=24)
    aggregate_after_reauth: bool = True
    app_redirect_url: str | None = None
    app_url_scheme: str | None = None
    max_reminders: int = 3
    reminder_schedule: tuple[timedelta, ...] = (
        timedelta(0),
        timedelta(hours=24),
        timedelta(hours=72),
    )
    max_attempts: int = 8
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_cap: timedelta = timedelta(hours=1)
    reason_table: Mapping[str, Reason | None] = field(default_factory=lambda: DEFAULT_REASON_TABLE)

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyConfig:
        table: dict[str, Reason | None] = dict(DEFAULT_REASON_TABLE)
        for status, reason in settings.reason_overrides.items():
            table[status] = Reason(reason) if reason else None
        return cls(
            abandon_after=settings.abandon_after,
            oauth_error_delay=settings.oauth_error_delay,
            aggregation_freshness=settings.aggregation_freshness,
            aggregate_after_reauth=settings.aggregate_after_reauth,
            app_redirect_url=settings.app_redirect_url,
            app_url_scheme=settings.app_url_scheme,
            max_reminders=settings.max_reminders,
            reminder_schedule=tuple(settings.reminder_schedule),
            max_attempts=settings.max_attempts,
            backoff_base=settings.backoff_base,
            backoff_cap=settings.backoff_cap,
            reason_table=MappingProxyType(table),
        )

    @property
    def effective_reminders(self) -> int:
        """Reminders per episode: the cap, or fewer when the schedule lists fewer offsets."""
        return min(self.max_reminders, len(self.reminder_schedule))


@dataclass(frozen=True)
class MemberSnapshot:
    """What the policy needs to know about a member (MX state and our own state)."""

    member_guid: str
    is_oauth: bool
    connection_status: str | None
    oauth_status: str | None = None
    oauth_error_reason: str | None = None
    oauth_started_at: datetime | None = None
    successfully_aggregated_at: datetime | None = None
    is_being_aggregated: bool = False
    channel: Channel = Channel.BROWSER
    state: State = State.IDLE
    reason: Reason | None = None
    episode: int = 0
    episode_started_at: datetime | None = None
    reminders_sent: int = 0
    attempts: int = 0
    next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class ChannelParams:
    """Query parameters that depend on the member's channel."""

    referral_source: str
    client_redirect_url: str | None = None
    ui_message_webview_url_scheme: str | None = None


@dataclass(frozen=True)
class Generate:
    """Ask MX for a fresh URI for reminder ``reminder`` of ``episode``."""

    reason: Reason
    episode: int
    episode_started_at: datetime
    reminder: int
    skip_aggregation: bool
    skip_why: SkipWhy
    params: ChannelParams
    new_episode: bool
    #: attempts already spent on this reminder (0 in a new episode or after a forced revival)
    attempts: int = 0


@dataclass(frozen=True)
class ReauthFields:
    """This service's state of a member after a decision: written back as is."""

    state: State
    reason: Reason | None
    episode: int
    episode_started_at: datetime | None
    reminders_sent: int
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None = None


@dataclass(frozen=True)
class Update:
    """No MX call: just store new state (wait, close the episode, or nothing to do)."""

    fields: ReauthFields
    note: str


Decision = Generate | Update


def link_params(g: Generate) -> dict[str, Any]:
    """What a link was generated with, stored on its outbox row so that a stale link can be
    regenerated exactly as it was, without deciding again."""
    return {
        "referral_source": g.params.referral_source,
        "client_redirect_url": g.params.client_redirect_url,
        "ui_message_webview_url_scheme": g.params.ui_message_webview_url_scheme,
        "skip_aggregation": g.skip_aggregation,
        "skip_why": g.skip_why.value,
    }


def regenerate_as_stored(
    *,
    reason: Reason,
    episode: int,
    episode_started_at: datetime,
    reminder: int,
    stored: Mapping[str, Any] | None,
    channel: Channel,
    cfg: PolicyConfig,
    skip_aggregation: bool,
) -> Generate:
    """The :class:`Generate` that produced a stored link (rows from before ``link_params``
    existed fall back to the channel's current parameters)."""
    if stored:
        params = ChannelParams(
            referral_source=str(stored["referral_source"]),
            client_redirect_url=stored.get("client_redirect_url"),
            ui_message_webview_url_scheme=stored.get("ui_message_webview_url_scheme"),
        )
        skip = bool(stored.get("skip_aggregation", skip_aggregation))
        why = SkipWhy(stored.get("skip_why", SkipWhy.STALE_DATA.value))
    else:
        params, skip, why = channel_params(channel, cfg), skip_aggregation, SkipWhy.STALE_DATA
    return Generate(
        reason=reason,
        episode=episode,
        episode_started_at=episode_started_at,
        reminder=reminder,
        skip_aggregation=skip,
        skip_why=why,
        params=params,
        new_episode=False,
    )


# --- the rules ----------------------------------------------------------------------------------


def reason_for(m: MemberSnapshot, now: datetime, cfg: PolicyConfig) -> Reason | None:
    """Why ``m`` needs re-authentication now, or None when it does not."""
    if not m.is_oauth or m.state in TERMINAL:
        return None
    if m.connection_status is not None:
        by_status = cfg.reason_table.get(m.connection_status.upper())
        if by_status is not None:
            return by_status
    started = m.oauth_started_at
    if started is None:
        return None
    if _looks_abandoned(m) and now - started >= cfg.abandon_after:
        return Reason.ABANDONED
    if _oauth_failed(m) and now - started >= cfg.oauth_error_delay:
        return Reason.OAUTH_FAILED
    return None


def _looks_abandoned(m: MemberSnapshot) -> bool:
    """OAuth started and not finished, whatever its age."""
    if m.oauth_started_at is None:
        return False
    if m.oauth_status == "PENDING":
        return True
    # UNKNOWN tells as little as no result at all.
    if m.oauth_status in {None, "UNKNOWN"} and m.connection_status in {"CREATED", "PENDING"}:
        return True
    return m.oauth_status == "ERRORED" and m.oauth_error_reason in ABANDON_ERROR_REASONS


def _oauth_failed(m: MemberSnapshot) -> bool:
    """The person tried OAuth and MX or the bank failed, whatever its age."""
    return (
        m.oauth_started_at is not None
        and m.oauth_status == "ERRORED"
        and m.oauth_error_reason in RETRY_ERROR_REASONS
    )


def next_check_at(m: MemberSnapshot, now: datetime, cfg: PolicyConfig) -> datetime | None:
    """When a member that is not eligible now may become eligible by time alone."""
    if not m.is_oauth or m.state in TERMINAL or m.oauth_started_at is None:
        return None
    if _looks_abandoned(m):
        at = m.oauth_started_at + cfg.abandon_after
    elif _oauth_failed(m):
        at = m.oauth_started_at + cfg.oauth_error_delay
    else:
        return None
    return at if at > now else None


def skip_aggregation_for(
    m: MemberSnapshot, now: datetime, cfg: PolicyConfig
) -> tuple[bool, SkipWhy]:
    """Whether MX should skip aggregating after OAuth, and why (stored with every attempt)."""
    if m.is_being_aggregated:
        return True, SkipWhy.AGGREGATION_IN_PROGRESS
    if (
        m.successfully_aggregated_at is not None
        and now - m.successfully_aggregated_at < cfg.aggregation_freshness
    ):
        return True, SkipWhy.RECENTLY_AGGREGATED
    if not cfg.aggregate_after_reauth:
        return True, SkipWhy.DISABLED_BY_CONFIG
    return False, SkipWhy.STALE_DATA


def channel_params(channel: Channel, cfg: PolicyConfig) -> ChannelParams:
    """APP gets the redirect and scheme when configured; BROWSER never gets either."""
    if channel is Channel.APP:
        return ChannelParams(
            referral_source="APP",
            client_redirect_url=cfg.app_redirect_url,
            ui_message_webview_url_scheme=cfg.app_url_scheme,
        )
    return ChannelParams(referral_source="BROWSER")


def reminder_due_at(episode_started_at: datetime, reminder: int, cfg: PolicyConfig) -> datetime:
    """When reminder number ``reminder`` (1-based) of an episode is due."""
    return episode_started_at + cfg.reminder_schedule[reminder - 1]


def decide(m: MemberSnapshot, now: datetime, cfg: PolicyConfig, *, force: bool = False) -> Decision:
    """What to do with a claimed member now.

    ``force`` (an operator's ``rerun --force``) skips backoff and reminder timing and revives a
    gave-up member, but never repeats a reminder already sent.
    """
    if force and m.state in TERMINAL:
        m = replace(m, state=State.IDLE)
    if force and m.state is State.GAVE_UP:
        m = replace(m, attempts=0)  # an operator's rerun gets a fresh attempt budget
    reason = reason_for(m, now, cfg)
    if reason is None:
        return _not_eligible(m, now, cfg)

    if m.state not in IN_EPISODE:
        return _generate(m, now, cfg, reason, episode=m.episode + 1, started=now, reminder=1)

    assert m.episode_started_at is not None, "an open episode has a start time"
    if m.state is State.GAVE_UP and not force:
        return Update(_fields(m, reason=reason, next_attempt_at=None), "gave up; rerun to retry")
    reminder = m.reminders_sent + 1
    if reminder > cfg.effective_reminders:
        return Update(
            _fields(m, state=State.AWAITING_USER, reason=reason, next_attempt_at=None),
            "all reminders sent",
        )
    if not force:
        due = reminder_due_at(m.episode_started_at, reminder, cfg)
        if m.attempts > 0 and m.next_attempt_at is not None:
            due = max(due, m.next_attempt_at)  # in backoff after a transient failure
        if due > now:
            return Update(_fields(m, reason=reason, next_attempt_at=due), "not due yet")
    return _generate(
        m, now, cfg, reason, episode=m.episode, started=m.episode_started_at, reminder=reminder
    )


def _generate(
    m: MemberSnapshot,
    now: datetime,
    cfg: PolicyConfig,
    reason: Reason,
    *,
    episode: int,
    started: datetime,
    reminder: int,
) -> Generate:
    skip, why = skip_aggregation_for(m, now, cfg)
    return Generate(
        reason=reason,
        episode=episode,
        episode_started_at=started,
        reminder=reminder,
        skip_aggregation=skip,
        skip_why=why,
        params=channel_params(m.channel, cfg),
        new_episode=episode != m.episode,
        attempts=0 if episode != m.episode else m.attempts,
    )


def _not_eligible(m: MemberSnapshot, now: datetime, cfg: PolicyConfig) -> Update:
    if m.state in TERMINAL:
        return Update(_fields(m, next_attempt_at=None), f"terminal: {m.state}")
    note = "episode ended: no longer eligible" if m.state in IN_EPISODE else "not eligible"
    return Update(
        ReauthFields(
            state=State.IDLE,
            reason=None,
            episode=m.episode,
            episode_started_at=None,
            reminders_sent=0,
            attempts=0,
            next_attempt_at=next_check_at(m, now, cfg),
        ),
        note,
    )


def _fields(m: MemberSnapshot, **changes: object) -> ReauthFields:
    base = ReauthFields(
        state=m.state,
        reason=m.reason,
        episode=m.episode,
        episode_started_at=m.episode_started_at,
        reminders_sent=m.reminders_sent,
        attempts=m.attempts,
        next_attempt_at=m.next_attempt_at,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- outcomes -----------------------------------------------------------------------------------


class Outcome(StrEnum):
    SUCCESS = "success"
    NOT_OAUTH_CAPABLE = "not_oauth_capable"
    MEMBER_NOT_FOUND = "member_not_found"
    BAD_REQUEST = "bad_request"
    TRANSIENT = "transient"
    CONFIGURATION = "configuration"
    DUPLICATE = "duplicate"


def after_outcome(
    m: MemberSnapshot,
    g: Generate,
    outcome: Outcome,
    now: datetime,
    cfg: PolicyConfig,
    *,
    retry_after: float | None = None,
    error: str | None = None,
    rng: random.Random | None = None,
) -> ReauthFields:
    """The member's state after the MX call decided by ``g`` ended with ``outcome``.

    ``DUPLICATE`` means the outbox already holds this reminder (a redelivered batch): the member
    moves on exactly as after a success, and nothing new is notified.
    ``CONFIGURATION`` spends no attempt: the member keeps its state and is retried after a pause.
    """
    if outcome in (Outcome.SUCCESS, Outcome.DUPLICATE):
        nxt = g.reminder + 1
        # Built directly (the common case, once per member): a frozen dataclass is slow to build.
        return ReauthFields(
            state=State.AWAITING_USER,
            reason=g.reason,
            episode=g.episode,
            episode_started_at=g.episode_started_at,
            reminders_sent=g.reminder,
            attempts=0,
            next_attempt_at=(
                reminder_due_at(g.episode_started_at, nxt, cfg)
                if nxt <= cfg.effective_reminders
                else None
            ),
        )
    base = ReauthFields(
        state=State.PENDING,
        reason=g.reason,
        episode=g.episode,
        episode_started_at=g.episode_started_at,
        reminders_sent=g.reminder - 1,
        attempts=g.attempts,
        next_attempt_at=None,
    )
    if outcome is Outcome.NOT_OAUTH_CAPABLE:
        return replace(base, state=State.NOT_OAUTH_CAPABLE, last_error=error)
    if outcome is Outcome.MEMBER_NOT_FOUND:
        return replace(base, state=State.GONE, last_error=error)
    if outcome is Outcome.BAD_REQUEST:
        # A permanent refusal about this member: retrying blindly would burn quota.
        return replace(base, state=State.GAVE_UP, last_error=error)
    if outcome is Outcome.CONFIGURATION:
        # Not the member's fault: keep everything, look again after a pause.
        return replace(
            _fields(m),
            next_attempt_at=now + cfg.backoff_base,
            last_error=error,
        )
    attempts = base.attempts + 1
    if attempts >= cfg.max_attempts:
        return replace(base, state=State.GAVE_UP, attempts=attempts, last_error=error)
    delay = backoff_delay(
        attempts, base=cfg.backoff_base, cap=cfg.backoff_cap, retry_after=retry_after, rng=rng
    )
    return replace(base, attempts=attempts, next_attempt_at=now + delay, last_error=error)


def ended_by_oauth_success(m: MemberSnapshot) -> ReauthFields:
    """OAuth finished: the episode ends and reminders stop."""
    return ReauthFields(
        state=State.IDLE,
        reason=None,
        episode=m.episode,
        episode_started_at=None,
        reminders_sent=0,
        attempts=0,
        next_attempt_at=None,
    )
