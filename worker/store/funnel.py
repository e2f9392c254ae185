"""The funnel tables: record events and keep each episode's summary row, and the report's reads.

:func:`record` is called inside the transaction of the fact it records (the one decision
writer, the relay marking rows sent, a click, an OAuth result): one INSERT for the events,
one read of the affected summary rows, one INSERT of new rows and one UPDATE of changed ones,
whatever the batch size (:mod:`worker.store.bulk`: arrays bound to ``unnest`` on
PostgreSQL). How a row advances is :func:`worker.core.funnel.advance`.
The events of a committed transaction are handed to :func:`on_commit` observers (metrics), and
dropped on rollback. Never commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, event, func, literal, select
from sqlalchemy.orm import Session, sessionmaker

from models import Episode, FunnelEvent, Member
from worker.core import funnel
from worker.core.funnel import By, Event, GroupCounts, InstitutionRate, Stage, Summary
from worker.store import bulk

#: session.info key of the (stage, reason, channel) triples recorded in this transaction.
_PENDING = "funnel_recorded"
_SUMMARY_FIELDS = [f.name for f in dataclasses.fields(Summary)]
E = Episode

Recorded = list[tuple[str, str, str]]


def _summaries(members: Any) -> Any:
    return (
        select(Episode.id, *(getattr(Episode, f) for f in _SUMMARY_FIELDS))
        .where(members, Episode.episode.in_(bindparam("episodes", expanding=True)))
        .order_by(Episode.id)
        .with_for_update()
    )


#: The summary rows of some members' episodes, locked, in id order (see :func:`record`). Built
#: once: constructing it per call was a tenth of a press of Reconnect's write. On PostgreSQL the
#: member ids go as one array parameter (a batch's 200 ids as 200 placeholders made psycopg
#: parse the statement anew each time: it caches none with more than 50 parameters).
_SUMMARIES = _summaries(Episode.member_id.in_(bindparam("ids", expanding=True)))
_SUMMARIES_PG = _summaries(bulk.any_of(Episode.member_id, "ids"))


def record(session: Session, events: Iterable[Event]) -> int:
    """Write ``events`` and advance their episodes' summary rows; returns how many events.

    An event for an episode with no summary row (one opened before the funnel existed) is kept
    as an event only.
    """
    events = list(events)
    if not events:
        return 0
    # One INSERT ... SELECT FROM unnest(arrays) on PostgreSQL (worker.store.bulk), not an
    # executemany (a statement per row) nor .values([...]) (a new statement per call, compiled
    # bind by bind: it was half of a regenerate batch's CPU; bench/RESULTS.md, "Speed round two").
    bulk.insert_rows(
        session,
        FunnelEvent,
        [
            {
                "member_id": e.member_id,
                "episode": e.episode,
                "stage": e.stage.value,
                "at": e.at,
                "reminder": e.reminder,
                "detail": e.detail,
                "how": e.how,
            }
            for e in events
        ],
    )
    keys = {(e.member_id, e.episode) for e in events}
    ids = sorted({k[0] for k in keys})
    rows: dict[tuple[int, int], tuple[int | None, Summary]] = {}
    # Locked (in id order: no deadlock between two batches): the rows are read, advanced and
    # written back whole, so a concurrent writer (the relay and a click on the same episode)
    # must wait for this one rather than overwrite it with what it read before.
    # Columns, not ORM objects: an identity map would hand back what an earlier record() in
    # this session loaded, not what it wrote.
    episodes = sorted({k[1] for k in keys})
    if session.get_bind().dialect.name == "postgresql":
        found = session.execute(_SUMMARIES_PG, {"ids": bulk.array_text(ids), "episodes": episodes})
    else:
        found = session.execute(_SUMMARIES, {"ids": ids, "episodes": episodes})
    for row in found:
        if (row.member_id, row.episode) in keys:
            rows[(row.member_id, row.episode)] = (
                row.id,
                Summary(*row[1:]),  # the columns are selected in the dataclass's field order
            )
    fresh = [
        e for e in events if e.stage is Stage.DETECTED and (e.member_id, e.episode) not in rows
    ]
    about: dict[int, tuple[str | None, str | None]] = {}
    if fresh:
        about = {
            r.id: (r.institution_code, r.channel)
            for r in session.execute(
                select(Member.id, Member.institution_code, Member.channel).where(
                    bulk.one_of(session, Member.id, sorted({e.member_id for e in fresh}))
                )
            )
        }
    before = {k: v[1] for k, v in rows.items()}
    recorded: Recorded = []
    for e in events:
        key = (e.member_id, e.episode)
        if key in rows:
            rid, s = rows[key]
            rows[key] = (rid, funnel.advance(s, e))
        elif e.stage is Stage.DETECTED:
            inst, channel = about.get(e.member_id, (None, None))
            rows[key] = (None, funnel.opened(e, institution_code=inst, channel=channel))
        else:
            recorded.append((e.stage.value, "", ""))
            continue
        s = rows[key][1]
        recorded.append((e.stage.value, s.reason or "", s.channel or ""))
    # Shallow: every field is a scalar (dataclasses.asdict deep-copies each value, ~6% of the
    # worker tree's CPU when it ran per row here).
    new = [_columns(s) for rid, s in rows.values() if rid is None]
    changed = [
        {"id": rid, **_columns(s)}
        for key, (rid, s) in rows.items()
        if rid is not None and s != before[key]
    ]
    bulk.insert_rows(session, Episode, new)  # one statement each, as above
    bulk.update_by_id(session, Episode, changed)
    session.info.setdefault(_PENDING, []).extend(recorded)
    return len(events)


def _columns(s: Summary) -> dict[str, Any]:
    return {f: getattr(s, f) for f in _SUMMARY_FIELDS}


def on_commit(factory: sessionmaker[Session], observer: Callable[[Recorded], None]) -> None:
    """Call ``observer`` with the (stage, reason, channel) of every event a committed unit of
    work of ``factory`` recorded; a rolled-back unit's events are forgotten."""

    def committed(session: Session) -> None:
        done = session.info.pop(_PENDING, None)
        if done:
            observer(done)

    def rolled_back(session: Session) -> None:
        session.info.pop(_PENDING, None)

    event.listen(factory, "after_commit", committed)
    event.listen(factory, "after_rollback", rolled_back)


def notified(
    session: Session, rows: Sequence[tuple[int, int | None, int | None]], now: datetime
) -> int:
    """Record NOTIFIED for outbox rows just marked sent: (member_id, the payload's episode and
    reminder) triples."""
    return record(
        session,
        (
            Event(member_id, episode or 0, Stage.NOTIFIED, now, reminder=reminder or None)
            for member_id, episode, reminder in rows
        ),
    )


def aggregated(session: Session, seen: Mapping[int, datetime | None]) -> int:
    """Record AGGREGATED for reconnected episodes not yet aggregated, given what MX says each
    member last aggregated successfully at (``{member_id: successfully_aggregated_at}``)."""
    ids = sorted(mid for mid, at in seen.items() if at is not None)
    if not ids:
        return 0
    rows = session.execute(
        select(E.member_id, E.episode, E.outcome, E.detected_at).where(
            E.member_id.in_(ids), E.outcome == funnel.Outcome.RECONNECTED.value,
            E.aggregated_at.is_(None),
        )
    )  # fmt: skip
    events = []
    for mid, episode, outcome, detected_at in rows:
        at = seen[mid]
        if funnel.aggregated_after_reconnect(outcome, detected_at, at):
            assert at is not None
            events.append(Event(mid, episode, Stage.AGGREGATED, at))
    return record(session, events)


def path(session: Session, member_id: int) -> list[FunnelEvent]:
    """One member's funnel events in time order."""
    return list(
        session.scalars(
            select(FunnelEvent)
            .where(FunnelEvent.member_id == member_id)
            .order_by(FunnelEvent.at, FunnelEvent.id)
        )
    )


# --- the report -------------------------------------------------------------------------------


def _key(by: By | None) -> Any:
    """The grouping column (raw: a bound COALESCE would differ between SELECT and GROUP BY on
    PostgreSQL); NULL becomes "-" in Python."""
    if by is By.REASON:
        return E.reason
    if by is By.INSTITUTION:
        return E.institution_code
    if by is By.CHANNEL:
        return E.channel
    if by is By.REMINDER:
        return E.reminders_sent
    return literal("all")


def _name(key: object) -> str:
    return "-" if key is None else str(key)


def group_counts(session: Session, since: datetime, by: By | None) -> list[GroupCounts]:
    """Per group: episodes detected since ``since`` reaching each stage, and their outcomes.
    One index range scan of ``ix_episodes_detected_at`` (or a table scan when the range covers
    most of the table, as the planner sees fit)."""
    key = _key(by).label("key")
    stage_cols = [func.count(getattr(E, col)).label(stage.value) for stage, col in funnel.FUNNEL]
    outcome_cols = [
        func.sum(case((E.outcome == o.value, 1), else_=0)).label(f"o_{o.value}")
        for o in funnel.Outcome
    ]
    query = select(key, *stage_cols, *outcome_cols).where(E.detected_at >= since)
    if by is not None:
        query = query.group_by(key)
    out = []
    for r in session.execute(query):
        m = r._mapping
        if not m[funnel.Stage.DETECTED.value]:
            continue
        out.append(
            GroupCounts(
                key=_name(m["key"]),
                stages={stage.value: int(m[stage.value] or 0) for stage, _ in funnel.FUNNEL},
                outcomes={o.value: int(m[f"o_{o.value}"] or 0) for o in funnel.Outcome},
            )
        )
    return sorted(out, key=lambda g: (-g.total, g.key))


def reconnect_minutes(
    session: Session, since: datetime, by: By | None
) -> dict[str, dict[int, int]]:
    """Per group: {minutes from detection to confirmed reconnection: episodes}."""
    key = _key(by).label("key")
    minute = (E.reconnect_s // 60).label("minute")
    query = (
        select(key, minute, func.count())
        .where(E.detected_at >= since, E.reconnect_s.is_not(None))
        .group_by(key, minute)
    )
    out: dict[str, dict[int, int]] = {}
    for k, m, n in session.execute(query):
        out.setdefault(_name(k), {})[int(m)] = int(n)
    return out


def converting_reminders(session: Session, since: datetime) -> dict[int, int]:
    """{reminder that preceded the reconnection: episodes} (0: reconnected before any)."""
    query = (
        select(E.converting_reminder, func.count())
        .where(E.detected_at >= since, E.confirmed_at.is_not(None))
        .group_by(E.converting_reminder)
    )
    return {int(r or 0): int(n) for r, n in session.execute(query)}


def institution_rates(session: Session, since: datetime) -> list[InstitutionRate]:
    """Per institution: episodes where someone clicked, and those not confirmed reconnected."""
    inst = E.institution_code
    failed = func.sum(case((E.confirmed_at.is_(None), 1), else_=0))
    query = (
        select(inst, func.count(), failed)
        .where(E.detected_at >= since, E.clicked_at.is_not(None))
        .group_by(inst)
    )
    return [InstitutionRate(_name(i), int(n), int(f or 0)) for i, n, f in session.execute(query)]
