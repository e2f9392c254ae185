"""MX webhooks: take them in (``reauth serve``'s ``POST /mx/webhooks``) and apply them.

**Intake** (:func:`parse`, :func:`intake`): the raw body is stored in the inbox before the 204 is
answered, so an event MX was told we accepted is in the database. A body that is not a JSON
object or lacks ``member_guid`` / ``user_guid`` is stored as ``rejected`` with the reason (MX
asks receivers not to answer errors for payloads they cannot parse). Identical bodies within
REAUTH_MX_WEBHOOK_DEDUPE_WINDOW are stored once.

**Apply** (:func:`apply_pending`, the ``reauth.apply_webhooks`` task): MX sends no event id, no
timestamp and no order, so an event is a trigger, not a fact. Pending events are claimed with a
lease, grouped per member (one MX read per member per batch), and whenever one could open or
close an episode the member is **read from MX** and what MX says *now* is stored and decided
through the policy and the one decision writer. A stale event can therefore never reopen an
episode that a newer fact closed. A member that enters a re-authentication reason is made due
and handed to a regenerate batch at once (its first reminder goes out within seconds); MEMBER
``deleted`` ends the member (state ``gone``, pending reminders canceled). The scan stays the
reconciliation backstop for anything a lost or failed event missed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from models import Member, WebhookEvent
from worker import metrics
from worker.core.funnel import How
from worker.core.policy import IN_EPISODE, State, Update, decide, ended_by_oauth_success
from worker.errors import MemberNotFound, MxError
from worker.mx import MemberRequest, MemberState
from worker.runtime import Runtime
from worker.store import decisions, funnel, inbox, leases, members
from worker.store.db import session_scope

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

#: The event types MX sends that this service acts on.
CONNECTION_STATUS = "CONNECTION_STATUS"
MEMBER = "MEMBER"
AGGREGATION = "AGGREGATION"
KNOWN_TYPES = frozenset({CONNECTION_STATUS, MEMBER, AGGREGATION})
#: The largest body accepted (413 past it).
MAX_BODY_BYTES = 64 * 1024
#: An event whose member MX could not be read is retried this many times, then ``failed``.
MAX_ATTEMPTS = 12
#: Stand-in for an institution MX did not name (CONNECTION_STATUS carries none); a later MEMBER
#: event or import fills it.
UNKNOWN_INSTITUTION = "unknown"


# --- intake ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """One received body, read: what to store, and why it is rejected or ignored if so."""

    event_type: str
    status: str = inbox.PENDING
    note: str | None = None
    action: str | None = None
    member_guid: str | None = None
    user_guid: str | None = None


def _text(value: object, limit: int = 64) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and len(value) <= limit and value.isprintable() else None


def _member_fields(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """MEMBER payloads carry the member's fields flat; accept them under ``member`` as well."""
    nested = doc.get("member")
    return nested if isinstance(nested, dict) else doc


def parse(body: bytes, path_type: str | None) -> Parsed:
    """Read a body as received. Never raises: a bad body is a ``rejected`` :class:`Parsed`."""
    hinted = (path_type or "").strip().upper()[:32] or "UNKNOWN"
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Parsed(hinted, inbox.REJECTED, "not JSON")
    if not isinstance(doc, dict):
        return Parsed(hinted, inbox.REJECTED, "not a JSON object")
    declared = _text(doc.get("type"), 32)
    event_type = declared.upper() if declared else hinted
    if event_type == "UNKNOWN":
        return Parsed(event_type, inbox.REJECTED, "no type")
    if declared and path_type and declared.upper() != hinted:
        return Parsed(event_type, inbox.REJECTED, f"type {declared.upper()} posted to {hinted}")
    fields = _member_fields(doc)
    action = _text(doc.get("action") or fields.get("action"), 32)
    member_guid = _text(fields.get("member_guid") or fields.get("guid"))
    user_guid = _text(fields.get("user_guid"))
    if event_type not in KNOWN_TYPES:
        return Parsed(event_type, inbox.IGNORED, "type not used", action, member_guid, user_guid)
    missing = [n for n, v in (("member_guid", member_guid), ("user_guid", user_guid)) if not v]
    if missing:
        return Parsed(
            event_type, inbox.REJECTED, f"missing {', '.join(missing)}", action, member_guid,
            user_guid,
        )  # fmt: skip
    return Parsed(event_type, inbox.PENDING, None, action, member_guid, user_guid)


def intake(rt: Runtime, body: bytes, path_type: str | None, now: datetime) -> inbox.Stored:
    """Store one authenticated POST (committed when this returns)."""
    return intake_many(rt, [(body, path_type)], now)[0]


def intake_many(
    rt: Runtime, posts: list[tuple[bytes, str | None]], now: datetime
) -> list[inbox.Stored]:
    """Store authenticated POSTs (``(body, type from the path)``) in one transaction: the
    intake's group commit. Committed when this returns; results in the same order."""
    parsed = [parse(body, path_type) for body, path_type in posts]
    events = [
        inbox.NewEvent(p.event_type, body, p.status, p.note, p.action, p.member_guid, p.user_guid)
        for p, (body, _) in zip(parsed, posts, strict=True)
    ]
    with session_scope(rt.sessions) as s:
        stored = inbox.add_many(s, events, now=now, window=rt.settings.mx_webhook_dedupe_window)
    outcomes: Counter[str] = Counter()
    for p, st in zip(parsed, stored, strict=True):
        outcome = "duplicate" if st.duplicate else p.status
        outcomes[outcome] += 1
        metrics.WEBHOOKS_RECEIVED.labels(type=_metric_type(p.event_type), outcome=outcome).inc()
        log.debug(
            "webhook.received", event_id=st.id, type=p.event_type, outcome=outcome,
            member_guid=p.member_guid, note=p.note,
        )  # fmt: skip
    log.info("webhook.stored", events=len(posts), **outcomes)
    return stored


def _metric_type(event_type: str) -> str:
    return event_type if event_type in KNOWN_TYPES else "OTHER"


# --- apply ----------------------------------------------------------------------------------------


@dataclass
class ApplyResult:
    events: int = 0
    applied: int = 0
    ignored: int = 0
    retried: int = 0
    failed: int = 0
    members_read: int = 0
    episodes_ended: int = 0
    #: Members handed to a regenerate batch at once.
    regenerated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Group:
    """One member's claimed events of a batch."""

    member_guid: str
    user_guid: str
    events: list[WebhookEvent] = field(default_factory=list)
    #: Facts the payloads carry that a member read does not (institution, is_oauth, user_id).
    hints: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False
    read: bool = False
    state: MemberState | MxError | None = None


def _payload(event: WebhookEvent) -> Mapping[str, Any]:
    try:
        doc = json.loads(event.body)
    except ValueError:
        return {}
    return _member_fields(doc) if isinstance(doc, dict) else {}


def _group(events: list[WebhookEvent], known: Mapping[str, Member]) -> dict[str, _Group]:
    """Group a batch per member and decide whose member MX must be read."""
    groups: dict[str, _Group] = {}
    for e in events:
        guid = e.member_guid or ""
        g = groups.setdefault(guid, _Group(guid, e.user_guid or ""))
        g.events.append(e)
        action = (e.action or "").lower()
        m = known.get(guid)
        in_episode = m is not None and State(m.reauth_state) in IN_EPISODE
        payload = _payload(e)
        if e.event_type == MEMBER:
            code = _text(payload.get("institution_code"), 128)
            if code:
                g.hints["institution_code"] = code
            if isinstance(payload.get("is_oauth"), bool):
                g.hints["is_oauth"] = payload["is_oauth"]
            user_id = _text(payload.get("user_id"), 128)
            if user_id:
                g.hints["user_id"] = user_id
            if action == "deleted":
                g.deleted = True
            elif m is None or in_episode or payload.get("connection_status") != m.connection_status:
                g.read = True
        elif e.event_type == CONNECTION_STATUS:
            g.read = True
        elif e.event_type == AGGREGATION and in_episode:
            g.read = True  # member_data_updated after an OAuth attempt may end the episode
    return groups


async def _read_all(rt: Runtime, groups: list[_Group]) -> None:
    # As many reads in flight as the MX client allows (REAUTH_MX_MAX_CONCURRENCY); its rate
    # limit (REAUTH_MX_RATE_LIMIT_PER_SECOND) paces them against MX's budget.
    gate = asyncio.Semaphore(rt.settings.mx_max_concurrency)

    async def one(g: _Group) -> None:
        async with gate:
            try:
                g.state = await rt.mx.read_member(MemberRequest(g.member_guid, g.user_guid))
            except MxError as exc:
                g.state = exc

    await asyncio.gather(*(one(g) for g in groups))


def _gone(m: Member) -> decisions.Change:
    snap = members.snapshot(m)
    fields = replace(ended_by_oauth_success(snap), state=State.GONE)
    return decisions.Change(m.id, snap.state, fields, keep_last_error=True)


def _mx_values(state: MemberState, hints: Mapping[str, Any]) -> dict[str, Any]:
    """The member's MX columns from what MX answered now (payload facts fill what it lacks)."""
    values: dict[str, Any] = {"connection_status": state.connection_status}
    if state.is_being_aggregated is not None:
        values["is_being_aggregated"] = state.is_being_aggregated
    if state.successfully_aggregated_at is not None:
        values["successfully_aggregated_at"] = state.successfully_aggregated_at
    is_oauth = state.is_oauth if state.is_oauth is not None else hints.get("is_oauth")
    if is_oauth is not None:
        values["is_oauth"] = bool(is_oauth)
    for key in ("institution_code", "user_id"):
        if key in hints:
            values[key] = hints[key]
    if state.is_connected:
        # Connected again: whatever OAuth attempt was on record worked.
        values.update(oauth_status="SUCCESS", oauth_error_reason=None)
    return values


@dataclass
class _Outcome:
    status: str
    note: str
    due: int | None = None
    ended: int = 0


def _apply_group(s: Any, rt: Runtime, g: _Group, m: Member | None, now: datetime) -> _Outcome:
    """Apply one member's events inside the write transaction (``m``: the member, locked)."""
    if g.deleted:
        if m is None:
            return _Outcome(inbox.IGNORED, "deleted: unknown member")
        if State(m.reauth_state) is State.GONE:
            return _Outcome(inbox.APPLIED, "deleted: already gone")
        ended = decisions.apply(s, [_gone(m)], now=now, how=How.WEBHOOK)
        return _Outcome(inbox.APPLIED, "deleted: member gone", ended=ended)
    if not g.read:
        return _Outcome(inbox.IGNORED, "nothing to do")
    state = g.state
    if isinstance(state, MemberNotFound):
        if m is None:
            return _Outcome(inbox.IGNORED, "unknown member; MX: not found")
        ended = decisions.apply(s, [_gone(m)], now=now, how=How.WEBHOOK)
        return _Outcome(inbox.APPLIED, "MX: member not found; gone", ended=ended)
    assert isinstance(state, MemberState)
    values = _mx_values(state, g.hints)
    status = state.connection_status or "null"
    if m is None:
        m = members.add_new(
            s,
            {
                "member_guid": g.member_guid, "user_guid": g.user_guid,
                "institution_code": UNKNOWN_INSTITUTION, "is_oauth": False,
                "channel": "BROWSER", **values,
            },
            now=now,
        )  # fmt: skip
        s.flush()
        note = f"new member; MX: {status}"
    elif not members.set_mx_fields(m, values):
        return _Outcome(inbox.APPLIED, f"unchanged; MX: {status}")
    else:
        note = f"MX: {status}"
    snap = members.snapshot(m)
    decision = decide(snap, now, rt.policy)
    if isinstance(decision, Update):
        # MX was read just now: a member it reports connected is a confirmed reconnection.
        change = decisions.Change(
            m.id, snap.state, decision.fields, keep_last_error=True,
            confirmed=bool(state.is_connected),
        )  # fmt: skip
        ended = decisions.apply(s, [change], now=now, how=How.WEBHOOK)
        funnel.aggregated(s, {m.id: m.successfully_aggregated_at})
        return _Outcome(inbox.APPLIED, f"{note}; {decision.note}", ended=ended)
    # No flush here: the batch's member updates go out together at the commit.
    members.make_due(m, now)
    return _Outcome(inbox.APPLIED, f"{note}; due now ({decision.reason})", due=m.id)


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(5 * 2**attempts, 3600))


def _write(
    rt: Runtime,
    *,
    events: list[WebhookEvent],
    groups: Mapping[str, _Group],
    owner: str,
    now: datetime,
    result: ApplyResult,
) -> list[int]:
    """The write transaction of a batch, for the events still ours; returns the members that
    became due."""
    due: list[int] = []
    finished: dict[tuple[str, str], list[int]] = {}
    with session_scope(rt.sessions) as s:
        mine = inbox.held(s, [e.id for e in events], owner)
        # The batch's members, locked in one statement (not one per member).
        locked = members.by_guids(s, sorted(groups), for_update=True)
        for g in groups.values():
            ids = [e.id for e in g.events if e.id in mine]
            if not ids:
                continue
            if isinstance(g.state, MxError) and not isinstance(g.state, MemberNotFound):
                note = f"MX read failed: {type(g.state).__name__}"
                tries = max(e.attempts for e in g.events) + 1
                if tries >= MAX_ATTEMPTS:
                    inbox.finish(s, ids, owner, status=inbox.FAILED, note=note, now=now)
                    result.failed += len(ids)
                else:
                    inbox.retry_later(s, ids, owner, until=now + _retry_delay(tries), note=note)
                    result.retried += len(ids)
                continue
            out = _apply_group(s, rt, g, locked.get(g.member_guid), now)
            # Finished together below: most members of a batch share their outcome's note.
            finished.setdefault((out.status, out.note), []).extend(ids)
            result.episodes_ended += out.ended
            if out.status == inbox.APPLIED:
                result.applied += len(ids)
            else:
                result.ignored += len(ids)
            if out.due is not None:
                due.append(out.due)
            log.debug("webhook.applied", member_guid=g.member_guid, events=len(ids),
                      status=out.status, note=out.note)  # fmt: skip
        for (status, note), ids in finished.items():
            inbox.finish(s, ids, owner, status=status, note=note, now=now)
    return due


def apply_batch(
    rt: Runtime,
    *,
    clock: Clock,
    hand_on: Callable[[list[int]], None],
    more: Callable[[], None] | None = None,
) -> ApplyResult:
    """Claim one batch of pending events and apply it; ``hand_on`` gets the members that became
    due (after the commit). ``more`` is called when the batch came out full (more events are
    probably waiting), before the MX reads: another worker process can claim the next batch
    while this one reads and writes."""
    result = ApplyResult()
    owner = leases.new_owner()
    started = time.perf_counter()
    with session_scope(rt.sessions) as s:
        events = inbox.claim_pending(
            s, now=clock(), owner=owner, lease=rt.settings.claim_lease,
            limit=rt.settings.batch_size,
        )  # fmt: skip
        known = members.by_guids(s, sorted({e.member_guid or "" for e in events}))
        groups = _group(events, known)
        s.expunge_all()
    result.events = len(events)
    if not events:
        return result
    claimed = time.perf_counter()
    if more is not None and len(events) >= rt.settings.batch_size:
        more()  # counted in read_ms: it talks to Redis and the broker
    to_read = [g for g in groups.values() if g.read and not g.deleted]
    if to_read:
        rt.run(_read_all(rt, to_read))
        result.members_read = len(to_read)
    read = time.perf_counter()
    due = _write(rt, events=events, groups=groups, owner=owner, now=clock(), result=result)
    written = time.perf_counter()
    for name in ("applied", "ignored", "retried", "failed"):
        if n := getattr(result, name):
            metrics.WEBHOOKS_APPLIED.labels(result=name).inc(n)
    if due:
        hand_on(due)
        result.regenerated = len(due)
    # One line per batch (the inbox rows are the per-event record), with where its time went.
    log.info(
        "webhook.batch", **result.as_dict(),
        claim_ms=round((claimed - started) * 1000, 1), read_ms=round((read - claimed) * 1000, 1),
        write_ms=round((written - read) * 1000, 1),
        hand_on_ms=round((time.perf_counter() - written) * 1000, 1),
    )  # fmt: skip
    return result


def apply_pending(
    rt: Runtime,
    *,
    clock: Clock,
    hand_on: Callable[[list[int]], None],
    max_batches: int = 50,
    more: Callable[[], None] | None = None,
) -> ApplyResult:
    """Apply pending events batch by batch until none is left (or ``max_batches``: the sweeper
    goes on where this stopped). ``more``: see :func:`apply_batch`."""
    total = ApplyResult()
    for _ in range(max_batches):
        batch = apply_batch(rt, clock=clock, hand_on=hand_on, more=more)
        for name, value in batch.as_dict().items():
            setattr(total, name, getattr(total, name) + value)
        if batch.events < rt.settings.batch_size:
            break
    return total


def claim_due(rt: Runtime, ids: list[int], now: datetime) -> tuple[list[int], str]:
    """Claim the members an event made due, for a regenerate batch of their own."""
    owner = leases.new_owner()
    with session_scope(rt.sessions) as s:
        page = members.claim_due(
            s, now=now, owner=owner, lease=rt.handoff_lease, limit=len(ids),
            member_ids=ids,
        )  # fmt: skip
    return page.ids, owner


def pending(rt: Runtime, now: datetime) -> int:
    """Events waiting to be applied (the sweeper queues a job only when there are some)."""
    with session_scope(rt.sessions) as s:
        return inbox.pending_count(s, now)
