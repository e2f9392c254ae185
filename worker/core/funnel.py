"""The re-authentication funnel, pure: which stages a change means, how an episode's summary
row advances, and the report's arithmetic (conversion, percentiles, the institution alert rule).

An episode's path (docs/FUNNEL.md)::

    detected (reason, how) → link generated → notified (reminder n) → clicked → window opened
      → result (success | error reason) → confirmed reconnected → aggregated
    or: gave up | not OAuth capable | gone | ended (no longer eligible, not confirmed by us)

Events are facts with a time; the summary row (one per member and episode) is what the report
reads, so no report scans events. No IO here: the store writes what these functions return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from worker.core.ages import parse_window
from worker.core.policy import IN_EPISODE, ReauthFields, State


class Stage(StrEnum):
    DETECTED = "detected"
    LINK = "link"
    NOTIFIED = "notified"
    CLICKED = "clicked"
    OPENED = "opened"
    RESULT = "result"
    CONFIRMED = "confirmed"
    AGGREGATED = "aggregated"
    GAVE_UP = "gave_up"
    NOT_OAUTH_CAPABLE = "not_oauth_capable"
    GONE = "gone"
    #: The episode ended without our confirmation (MX no longer gives a reason: e.g. the member
    #: was reconnected elsewhere, or the bank's status changed).
    ENDED = "ended"


class How(StrEnum):
    """How an episode was detected: the trigger of the batch that opened it."""

    SCAN = "scan"
    WEBHOOK = "webhook"
    IMPORT = "import"
    RERUN = "rerun"

    @classmethod
    def of_trigger(cls, trigger: str) -> How:
        if trigger == "webhook":
            return cls.WEBHOOK
        if trigger == "import":
            return cls.IMPORT
        if trigger == "rerun":
            return cls.RERUN
        return cls.SCAN


class Outcome(StrEnum):
    """Where an episode stands (``None`` on the row while it is open and undecided)."""

    RECONNECTED = "reconnected"
    ENDED = "ended"
    GAVE_UP = "gave_up"
    NOT_OAUTH_CAPABLE = "not_oauth_capable"
    GONE = "gone"


#: The stages the report draws as a funnel, in order, with the summary column each one counts.
FUNNEL: tuple[tuple[Stage, str], ...] = (
    (Stage.DETECTED, "detected_at"),
    (Stage.LINK, "link_at"),
    (Stage.NOTIFIED, "notified_at"),
    (Stage.CLICKED, "clicked_at"),
    (Stage.OPENED, "opened_at"),
    (Stage.RESULT, "result_at"),
    (Stage.CONFIRMED, "confirmed_at"),
    (Stage.AGGREGATED, "aggregated_at"),
)

_TERMINAL_STAGE = {
    State.GAVE_UP: Stage.GAVE_UP,
    State.NOT_OAUTH_CAPABLE: Stage.NOT_OAUTH_CAPABLE,
    State.GONE: Stage.GONE,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One funnel fact about one member's episode."""

    member_id: int
    episode: int
    stage: Stage
    at: datetime
    reminder: int | None = None
    #: detected: the reason; result: "success" or the error reason; others: None
    detail: str | None = None
    #: detected only: how (scan, webhook, import, rerun)
    how: str | None = None


def change_events(
    member_id: int,
    before: State,
    after: ReauthFields,
    *,
    now: datetime,
    how: How = How.SCAN,
    before_reminders: int | None = None,
    confirmed: bool = False,
    new_episode: bool = False,
) -> list[Event]:
    """The funnel events a decision means.

    ``before_reminders`` (the reminders sent before the change) is given only by the step that
    generated a link; ``confirmed`` only by writers that read the member connected from MX
    (an OAuth success, the confirmation read, a reminder's live read). ``new_episode``: the
    decision opened an episode even if MX refused at once (not OAuth capable, gone).
    """
    out: list[Event] = []
    ep = after.episode
    opens = new_episode or (before not in IN_EPISODE and after.state in IN_EPISODE)
    if opens:
        reason = after.reason.value if after.reason is not None else None
        started = after.episode_started_at or now
        out.append(Event(member_id, ep, Stage.DETECTED, started, detail=reason, how=how.value))
    if (
        before_reminders is not None
        and after.state is State.AWAITING_USER
        and after.reminders_sent > before_reminders
    ):
        out.append(Event(member_id, ep, Stage.LINK, now, reminder=after.reminders_sent))
    if (
        after.state in _TERMINAL_STAGE
        and before != after.state
        and (opens or before in IN_EPISODE or after.state in IN_EPISODE)
    ):
        out.append(Event(member_id, ep, _TERMINAL_STAGE[after.state], now))
    if before in IN_EPISODE and after.state is State.IDLE:
        out.append(Event(member_id, ep, Stage.CONFIRMED if confirmed else Stage.ENDED, now))
    return out


def aggregated_after_reconnect(
    outcome: str | None, detected_at: datetime, aggregated_at: datetime | None
) -> bool:
    """Whether MX's ``successfully_aggregated_at`` is the aggregation that followed this
    episode's reconnection: the episode ended reconnected and MX aggregated after it was
    detected (before detection the connection was already broken, so an aggregation then is
    an old one)."""
    return (
        outcome == Outcome.RECONNECTED.value
        and aggregated_at is not None
        and aggregated_at > detected_at
    )


# --- the summary row ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """One episode at a glance (the ``episodes`` row)."""

    member_id: int
    episode: int
    reason: str | None
    institution_code: str | None
    channel: str | None
    detected_at: datetime
    detected_how: str
    link_at: datetime | None = None
    notified_at: datetime | None = None
    clicked_at: datetime | None = None
    opened_at: datetime | None = None
    result_at: datetime | None = None
    result: str | None = None
    confirmed_at: datetime | None = None
    aggregated_at: datetime | None = None
    ended_at: datetime | None = None
    reminders_sent: int = 0
    converting_reminder: int | None = None
    #: seconds from detection to confirmation (kept so the report never does date arithmetic)
    reconnect_s: int | None = None
    outcome: str | None = None


def opened(event: Event, *, institution_code: str | None, channel: str | None) -> Summary:
    """The summary row a DETECTED event starts."""
    assert event.stage is Stage.DETECTED
    return Summary(
        member_id=event.member_id,
        episode=event.episode,
        reason=event.detail,
        institution_code=institution_code,
        channel=channel,
        detected_at=event.at,
        detected_how=event.how or How.SCAN.value,
    )


def _first(current: datetime | None, at: datetime) -> datetime:
    return at if current is None or at < current else current


def advance(s: Summary, e: Event) -> Summary:
    """The summary after event ``e``: first times are kept, the latest result and outcome win.

    Idempotent for a repeated event, so a redelivered batch changes nothing.
    """
    stage = e.stage
    if stage is Stage.LINK:
        # A new link after giving up: an operator's rerun revived the episode.
        revived = s.outcome == Outcome.GAVE_UP.value and s.ended_at is None
        return replace(s, link_at=_first(s.link_at, e.at), outcome=None if revived else s.outcome)
    if stage is Stage.NOTIFIED:
        return replace(
            s,
            notified_at=_first(s.notified_at, e.at),
            reminders_sent=max(s.reminders_sent, e.reminder or 0),
        )
    if stage is Stage.CLICKED:
        return replace(s, clicked_at=_first(s.clicked_at, e.at))
    if stage is Stage.OPENED:
        return replace(s, opened_at=_first(s.opened_at, e.at))
    if stage is Stage.RESULT:
        if s.result == "success" and e.detail != "success":
            return replace(s, result_at=_first(s.result_at, e.at))  # a success is not undone
        return replace(s, result_at=_first(s.result_at, e.at), result=e.detail)
    if stage is Stage.CONFIRMED:
        if s.confirmed_at is not None:
            return s
        return replace(
            s,
            confirmed_at=e.at,
            ended_at=e.at,
            outcome=Outcome.RECONNECTED.value,
            converting_reminder=s.reminders_sent or None,
            reconnect_s=max(0, int((e.at - s.detected_at).total_seconds())),
        )
    if stage is Stage.AGGREGATED:
        return replace(s, aggregated_at=_first(s.aggregated_at, e.at))
    if stage is Stage.GAVE_UP:
        return s if s.ended_at is not None else replace(s, outcome=Outcome.GAVE_UP.value)
    if stage in (Stage.NOT_OAUTH_CAPABLE, Stage.GONE, Stage.ENDED):
        if s.ended_at is not None:
            return s
        return replace(s, ended_at=e.at, outcome=Outcome(stage.value).value)
    return s


# --- the report ---------------------------------------------------------------------------------


class By(StrEnum):
    """What ``reauth report --by`` may group on."""

    REASON = "reason"
    INSTITUTION = "institution"
    CHANNEL = "channel"
    REMINDER = "reminder"


@dataclass(frozen=True)
class GroupCounts:
    """Episodes of one group reaching each funnel stage, and how they ended."""

    key: str
    stages: Mapping[str, int]
    outcomes: Mapping[str, int]

    @property
    def total(self) -> int:
        return self.stages.get(Stage.DETECTED.value, 0)


def conversion(stages: Mapping[str, int]) -> list[dict[str, object]]:
    """Each funnel stage with its count, its share of the stage before and of detected."""
    out: list[dict[str, object]] = []
    detected = stages.get(Stage.DETECTED.value, 0)
    prev: int | None = None
    for stage, _ in FUNNEL:
        n = stages.get(stage.value, 0)
        out.append(
            {
                "stage": stage.value,
                "count": n,
                "of_previous": _ratio(n, prev) if prev is not None else None,
                "of_detected": _ratio(n, detected),
            }
        )
        prev = n
    return out


def _ratio(n: int, d: int | None) -> float | None:
    return round(n / d, 4) if d else None


def percentile(histogram: Mapping[int, int], q: float) -> int | None:
    """The ``q`` quantile (nearest rank) of values given as ``{value: count}``."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)  # pragma: no cover - rank <= total


def reconnect_curve(histogram: Mapping[int, int], detected: int) -> list[tuple[float, float]]:
    """(hours since detection, cumulative share of detected episodes reconnected) points;
    ``histogram`` maps minutes-to-reconnect to a count."""
    if not detected:
        return []
    points = [(0.0, 0.0)]
    seen = 0
    for minute in sorted(histogram):
        seen += histogram[minute]
        points.append((round(minute / 60, 4), round(seen / detected, 4)))
    return points


def wilson_lower(bad: int, n: int, z: float = 1.96) -> float:
    """The Wilson score interval's lower bound for ``bad`` of ``n`` (95% by default)."""
    if n == 0:
        return 0.0
    p = bad / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / denom)


#: The alert rule: at least this many OAuth attempts (clicked episodes) ...
ALERT_MIN_VOLUME = 20
#: ... and the 95% Wilson lower bound of its failure share above the rest's share plus this.
ALERT_MARGIN = 0.10


@dataclass(frozen=True)
class InstitutionRate:
    institution: str
    tried: int
    failed: int


def alerts(
    rates: Sequence[InstitutionRate],
    *,
    min_volume: int = ALERT_MIN_VOLUME,
    margin: float = ALERT_MARGIN,
) -> list[dict[str, object]]:
    """Institutions whose OAuth fails or is abandoned far more than the rest of the fleet.

    ``failed`` counts episodes where someone clicked (tried OAuth) and that were not confirmed
    reconnected. An institution is listed when it has at least ``min_volume`` tries and the
    Wilson 95% lower bound of its failure share exceeds the share of all *other* institutions
    by ``margin``: small samples cannot trip it by chance, and one bad bank cannot hide itself
    by dragging up the fleet rate it is compared with. Worst first.
    """
    tried = sum(r.tried for r in rates)
    failed = sum(r.failed for r in rates)
    out: list[dict[str, object]] = []
    for r in rates:
        if r.tried < min_volume:
            continue
        rest_n, rest_bad = tried - r.tried, failed - r.failed
        rest = rest_bad / rest_n if rest_n else 0.0
        lower = wilson_lower(r.failed, r.tried)
        if lower > rest + margin:
            out.append(
                {
                    "institution": r.institution,
                    "tried": r.tried,
                    "failed": r.failed,
                    "failure_rate": round(r.failed / r.tried, 4),
                    "wilson_lower": round(lower, 4),
                    "rest_rate": round(rest, 4),
                }
            )
    out.sort(key=lambda a: (-float(str(a["wilson_lower"])), str(a["institution"])))
    return out


def parse_since(text: str) -> int:
    """``--since`` (``30d``, ``12h``, ``90m``, ``2w``: :func:`worker.core.ages.parse_window`) →
    seconds. Raises ValueError with what is wrong."""
    return int(parse_window(text, "--since").total_seconds())


def parse_by(text: str | None) -> By | None:
    if text is None:
        return None
    try:
        return By(text.strip().lower())
    except ValueError:
        raise ValueError(
            f"--by {text!r}: expected one of {', '.join(b.value for b in By)}"
        ) from None


def totals(groups: Iterable[GroupCounts]) -> tuple[dict[str, int], dict[str, int]]:
    """Stage and outcome counts summed over groups."""
    stages: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for g in groups:
        for k, v in g.stages.items():
            stages[k] = stages.get(k, 0) + v
        for k, v in g.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    return stages, outcomes
