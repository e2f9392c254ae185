"""What on-call should do next, read from ``reauth status``'s result (pure, ``now`` passed in).

Each rule looks at the status document (the same one ``reauth status --json`` prints) and, when
something is stuck, says what it is and which command helps. The rules and their thresholds live
here, once, so the CLI only renders them and tests pin exactly when each one fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.core.ages import parse_time, relative, when

#: Gave-up members worth a look: at least this many ...
GAVE_UP_MIN = 10
#: ... and at least this share of the members in an episode (pending, awaiting_user, gave_up).
GAVE_UP_SHARE = 0.2
#: Pending notifications that count as a backlog on their own.
OUTBOX_BACKLOG_MIN = 1000
#: A pending notification older than this (plus the grouping window with ``user`` grouping)
#: means deliveries are not keeping up.
OUTBOX_OLDEST_MAX = timedelta(minutes=30)
#: The last scan is stale after this many scan intervals.
SCAN_STALE_INTERVALS = 3


@dataclass(frozen=True)
class Hint:
    """One stuck thing: what it is, and the commands (or steps) that help, in order."""

    key: str
    problem: str
    actions: tuple[str, ...]


def hints(status: dict[str, Any], now: datetime, *, scan_interval: timedelta) -> list[Hint]:
    """The hints that hold for ``status`` at ``now``, most urgent first."""
    found: list[Hint] = []
    paused = status.get("mx_paused")
    if paused:
        until = parse_time(paused["until"])
        lifts = f"lifts {relative(until, now)}" if until else "lifts by itself"
        found.append(
            Hint(
                "mx_paused",
                f"MX calls are paused fleet-wide until {when(until, now)}: {paused['why']}",
                (
                    "a configuration error stopped every worker (credentials, IP allow-list, "
                    "API version): see RUNBOOK 'mx_configuration_error' and fix the cause",
                    f"the pause {lifts}; once fixed, lift it now: "
                    "reauth unpause-mx --why '<what you fixed>'",
                ),
            )
        )
    outbox = status.get("outbox") or {}
    dead = int(outbox.get("dead", 0))
    if dead:
        found.append(
            Hint(
                "outbox_dead",
                f"{dead} notification(s) are dead (the sink refused them or stayed down)",
                (
                    "reauth notifications list --status dead   (shows the last error)",
                    "fix the sink, then: reauth notifications retry-dead",
                ),
            )
        )
    pending = int(outbox.get("pending", 0))
    oldest = parse_time(status.get("outbox_oldest_pending_at"))
    # With ``user`` grouping a row waits up to the window on purpose (for the person's other
    # members): only what waits longer than that is late.
    window = timedelta(seconds=int((status.get("notify_grouping") or {}).get("window_s", 0)))
    old = oldest is not None and now - oldest > OUTBOX_OLDEST_MAX + window
    if pending >= OUTBOX_BACKLOG_MIN or (pending and old):
        since = f"; the oldest is from {when(oldest, now)}" if oldest else ""
        found.append(
            Hint(
                "outbox_backlog",
                f"{pending} notification(s) wait in the outbox{since}",
                (
                    "is a worker consuming the queues? reauth worker (or check the Celery workers)",
                    "reauth notifications list --status pending   (next attempt, last error)",
                ),
            )
        )
    found.extend(_gave_up(status))
    found.extend(_scan(status.get("last_scan"), now, scan_interval))
    return found


def _gave_up(status: dict[str, Any]) -> list[Hint]:
    by_key: dict[str, int] = status.get("members") or {}
    gave_up = {k.split("/", 1)[1]: n for k, n in by_key.items() if k.startswith("gave_up/")}
    total = sum(gave_up.values())
    in_episode = sum(
        n for k, n in by_key.items() if k.split("/", 1)[0] in {"pending", "awaiting_user"}
    )
    if total < GAVE_UP_MIN or total < GAVE_UP_SHARE * (total + in_episode):
        return []
    reason = max(gave_up, key=lambda r: gave_up[r])
    return [
        Hint(
            "gave_up",
            f"{total} member(s) gave up ({total / (total + in_episode):.0%} of open episodes; "
            f"most with reason {reason})",
            (
                "reauth history <member_guid>   (the last attempts and errors of one of them)",
                "once the cause is fixed: "
                f"reauth rerun --reason {reason} --force --why '<what changed>'",
            ),
        )
    ]


def _scan(last: dict[str, Any] | None, now: datetime, interval: timedelta) -> list[Hint]:
    if last is None:
        return [
            Hint(
                "no_scan",
                "no scan has run yet",
                ("is beat running? reauth beat", "or run one now: reauth scan"),
            )
        ]
    started = parse_time(last["started_at"])
    if last.get("interrupted"):
        return [
            Hint(
                "scan_interrupted",
                f"the last scan (started {when(started, now)}) was interrupted; "
                "its claims were released",
                ("the next scheduled scan picks the members up; or now: reauth scan",),
            )
        ]
    if started is not None and now - started > SCAN_STALE_INTERVALS * interval:
        return [
            Hint(
                "scan_stale",
                f"the last scan started {when(started, now)}, more than "
                f"{SCAN_STALE_INTERVALS} scan intervals ago",
                ("is beat running? reauth beat", "run one now: reauth scan"),
            )
        ]
    return []
