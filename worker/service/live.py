"""Before a reminder, ask MX whether the member is connected again.

The first message of an episode follows a fresh fact (an import, a webhook, a scan of new
data). A reminder follows only time: the person may have reconnected meanwhile through the app,
and nagging them would send them back to OAuth for nothing. So each reminder's member is read
from MX first (Nexus ``GET /members/{guid}``, Platform ``.../status``); a member MX reports
CONNECTED has its episode ended through the one decision writer instead. A failed read changes
nothing: the reminder goes out as decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import structlog

from worker.core.policy import Generate, MemberSnapshot, ended_by_oauth_success
from worker.errors import MxError
from worker.mx import MemberRequest, MemberState, MxClient
from worker.runtime import Runtime
from worker.store import decisions, members
from worker.store.db import session_scope
from worker.store.members import MemberView

log = structlog.get_logger(__name__)

Todo = list[tuple[MemberView, MemberSnapshot, Generate]]


def is_reminder(g: Generate) -> bool:
    return not g.new_episode and g.reminder > 1


async def read_states(
    mx: MxClient, targets: Sequence[MemberView], concurrency: int
) -> list[MemberState | None]:
    """Each member's live state, or None where the read failed."""
    gate = asyncio.Semaphore(concurrency)

    async def one(m: MemberView) -> MemberState | None:
        async with gate:
            try:
                return await mx.read_member(
                    MemberRequest(member_guid=m.member_guid, user_guid=m.user_guid,
                                  user_id=m.user_id)
                )  # fmt: skip
            except MxError as exc:
                log.info("live_read_failed", member_guid=m.member_guid, error=type(exc).__name__)
                return None

    return list(await asyncio.gather(*(one(m) for m in targets)))


def drop_reconnected(rt: Runtime, todo: Todo, owner: str, now: datetime) -> tuple[Todo, int]:
    """The batch without the reminders of members MX reports connected (their episodes are
    ended here); returns the rest and how many ended."""
    reminders = [item for item in todo if is_reminder(item[2])]
    if not reminders:
        return todo, 0
    states = rt.run(
        read_states(rt.mx, [m for m, _, _ in reminders], rt.settings.mx_max_concurrency)
    )
    connected = {
        m.id: state
        for (m, _, _), state in zip(reminders, states, strict=True)
        if state is not None and state.is_connected
    }
    if not connected:
        return todo, 0
    with session_scope(rt.sessions) as s:
        ours = members.still_claimed(s, list(connected), owner)
        connected_again = {"connection_status": "CONNECTED"}
        changes = [
            decisions.Change(
                m.id,
                snap.state,
                ended_by_oauth_success(snap),
                extra=connected_again,
                confirmed=True,
            )
            for m, snap, _ in todo
            if m.id in ours
        ]
        decisions.apply(s, changes, now=now)
    for m, _, g in todo:
        if m.id in connected:
            log.info("reminder_skipped_connected", member_guid=m.member_guid, episode=g.episode)
    return [item for item in todo if item[0].id not in connected], len(connected)
