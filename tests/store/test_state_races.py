"""Newer facts win over batches in flight; ended episodes deliver nothing; configuration errors
stop the line. (Found in review: a batch deciding on old data must not overwrite an import or an
OAuth result that landed while it was calling MX.)"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from models import Member, Notification
from tests.pipeline_helpers import populate
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.service import actions
from worker.service.importer import MemberRow, upsert
from worker.service.regenerate import regenerate_batch
from worker.service.scan import run_scan
from worker.store.leases import new_owner
from worker.store.locks import mx_paused
from worker.store.members import claim_due


def _claim_all(rt: Runtime) -> tuple[list[int], str]:
    owner = new_owner()
    with rt.sessions.begin() as s:
        page = claim_due(s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=100)
    return page.ids, owner


def test_import_during_a_batch_wins(runtime: Runtime) -> None:
    """An import that reconnects a claimed member revokes the claim: the batch writes nothing
    for it and no notification goes to a connected member."""
    populate(runtime.engine, 1, utc_now())  # one EXPIRED member
    ids, owner = _claim_all(runtime)
    row = MemberRow(
        member_guid="MBR-000000",
        user_guid="USR-0000",
        institution_code="chase",
        is_oauth=True,
        connection_status="CONNECTED",
    )
    with runtime.sessions.begin() as s:
        upsert(s, [row], now=utc_now(), cfg=runtime.policy)
    result = regenerate_batch(runtime, ids, owner, clock=utc_now)
    assert result.claimed == 0
    with runtime.engine.connect() as conn:
        state = conn.execute(select(Member.reauth_state, Member.claim_owner)).one()
        notes = conn.scalar(select(Notification.id))
    assert tuple(state) == ("idle", None)
    assert notes is None


def test_oauth_success_cancels_undelivered_reminders(runtime: Runtime) -> None:
    """A reminder still in the outbox when OAuth succeeds is canceled, never delivered."""
    from worker.service.deliver import deliver

    populate(runtime.engine, 1, utc_now())
    ids, owner = _claim_all(runtime)
    regenerate_batch(runtime, ids, owner, clock=utc_now)  # outbox row, not yet delivered
    with runtime.sessions.begin() as s:
        actions.oauth_result(
            s,
            member_guid="MBR-000000",
            status="success",
            error_reason=None,
            now=utc_now(),
            actor="test",
        )
    result = deliver(runtime, clock=utc_now, owner="relay")
    assert result["claimed"] == 0
    with runtime.engine.connect() as conn:
        assert conn.scalar(select(Notification.status)) == "canceled"


def test_configuration_error_pauses_every_batch_and_scan(
    runtime: Runtime,
) -> None:
    """After a 401 that survives a session refresh, later batches and scans make no MX call
    until the pause (REAUTH_BACKOFF_BASE) has passed."""
    populate(runtime.engine, 14, utc_now())
    bad = Runtime(
        runtime.settings.model_copy(
            update={"mx_api_key": runtime.settings.mx_api_key.__class__("wrong-key")}
        )
    )
    try:
        ids, owner = _claim_all(bad)
        first = regenerate_batch(bad, ids, owner, clock=utc_now)
    finally:
        bad.close()
    assert first.configuration_error is not None
    with runtime.sessions.begin() as s:
        assert mx_paused(s, utc_now()) is not None
    scan = run_scan(runtime, lambda i, o: None, clock=utc_now, trigger="test")
    assert scan.paused is not None
    assert scan.claimed == 0
    later = utc_now() + runtime.settings.backoff_base + timedelta(seconds=1)
    resumed = run_scan(runtime, lambda i, o: None, clock=lambda: later, trigger="test")
    assert resumed.paused is None
    assert resumed.claimed > 0
