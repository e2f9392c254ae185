"""Refresh stale links: regenerate the URI of undelivered outbox rows whose link is too old.

MX URIs are one-time and MX documents no lifetime, so a row whose link is older than
``REAUTH_LINK_MAX_AGE`` is never delivered as is. This step leases such rows, asks MX for a new
URI with exactly the parameters stored on the row (``link_params``: no new decision, no extra
query), records an attempt with trigger ``refresh`` and stores the new link on the row and the
member. A row whose call fails keeps its old link and stays pending; the relay defers it rather
than deliver a stale link.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from worker.core.contract import format_time
from worker.core.policy import Channel, Reason, regenerate_as_stored
from worker.errors import SinkTransientError
from worker.notify import relay
from worker.notify.sinks import DeliveryResult
from worker.runtime import Runtime
from worker.service.links import with_state
from worker.service.regenerate import attempt_row, call_all, outcome_of, request_for
from worker.store import attempts, leases, members, notifications
from worker.store.db import session_scope

log = structlog.get_logger(__name__)


def refresh_stale(rt: Runtime, *, clock: Callable[[], datetime], task_id: str | None = None) -> int:
    """Regenerate the links of up to one batch of stale pending rows; returns how many."""
    now = clock()
    owner = leases.new_owner()
    settings = rt.settings
    with session_scope(rt.sessions) as s:
        stale = notifications.claim_stale(
            s,
            now=now,
            max_age=settings.link_max_age,
            owner=owner,
            lease=settings.notify_lease,
            limit=settings.notify_batch_size,
        )
        if not stale:
            return 0
        gens = [
            regenerate_as_stored(
                reason=Reason(row.payload["reason"]),
                episode=int(row.payload["episode"]),
                episode_started_at=row.member.episode_started_at or now,
                reminder=int(row.payload["reminder"]),
                stored=row.link_params,
                channel=Channel(row.payload.get("channel", row.member.channel)),
                cfg=rt.policy,
                skip_aggregation=bool(row.payload.get("skip_aggregation", False)),
            )
            for row in stale
        ]
        s.expunge_all()  # the members are read below outside this session
    requests = [
        request_for(row.member, g, with_state(settings, g.params.client_redirect_url, row.id, now))
        for row, g in zip(stale, gens, strict=True)
    ]
    calls = rt.run(call_all(rt.mx, requests, settings.mx_max_concurrency))
    now = clock()
    refreshed = 0
    attempt_rows: list[dict[str, Any]] = []
    failed: dict[uuid.UUID, DeliveryResult] = {}
    with session_scope(rt.sessions) as s:
        for row, g, res in zip(stale, gens, calls, strict=True):
            if res.skipped:
                continue
            attempt_rows.append(
                attempt_row(
                    row.member,
                    g,
                    res,
                    outcome_of(res.error),
                    mx_api=settings.mx_api.value,
                    trigger="refresh",
                    task_id=task_id,
                    now=now,
                )
            )
            if res.window is None:
                # Counts as a failed delivery attempt, so a link MX keeps refusing ends dead
                # instead of waiting forever.
                failed[row.id] = DeliveryResult(
                    SinkTransientError(f"link could not be refreshed: {type(res.error).__name__}")
                )
                continue
            payload = {
                **row.payload,
                "oauth_window_uri": res.window.oauth_window_uri,
                "generated_at": format_time(res.window.generated_at),
            }
            if notifications.replace_link(s, row.id, owner, payload=payload):
                members.store_uri(
                    s, row.member.id, res.window.oauth_window_uri, res.window.generated_at
                )
                refreshed += 1
        attempts.add(s, attempt_rows)
        notifications.release(s, [row.id for row in stale if row.id not in failed], owner)
    if failed:
        relay.record_outcomes(
            rt.sessions,
            failed,
            settings=settings,
            now=now,
            owner=owner,
            result=relay.RelayResult(),
            log=log,
        )
    log.info("links_refreshed", requested=len(stale), refreshed=refreshed)
    return refreshed
