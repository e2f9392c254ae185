"""The pipeline in process: scan → regenerate → outbox, on SQLite and PostgreSQL, against the
MX sandbox over real loopback HTTP."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, func, select, text

from models import Attempt, Member, Notification
from tests.pipeline_helpers import check_outcome, outbox_by_guid, populate, scan_now
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.service.regenerate import regenerate_batch
from worker.service.scan import dry_run, run_scan
from worker.store.leases import new_owner
from worker.store.locks import scan_lock
from worker.store.members import claim_due


def _count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)) or 0)


def test_inline_scan_notifies_each_eligible_member_once(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """Every eligible member gets exactly one notification with the right reason and parameters
    (as MX received them); no ineligible member gets one; a second scan creates none."""
    expected = populate(runtime.engine, 140, utc_now())
    result = scan_now(runtime, trigger="test")
    assert result["claimed"] == 140
    assert result["batches"] == 140 // 25 + 1
    check_outcome(expected, outbox_by_guid(runtime.engine), sandbox.requests())
    notified = sum(k.notified for k in expected.values())
    assert _count(runtime.engine, Notification) == notified

    again = scan_now(runtime, trigger="test")
    assert again["claimed"] == 0
    assert _count(runtime.engine, Notification) == notified
    with runtime.engine.connect() as conn:
        states = dict(
            conn.execute(
                select(Member.reauth_state, func.count()).group_by(Member.reauth_state)
            ).all()
        )
    assert states["awaiting_user"] == notified
    assert states["not_oauth_capable"] == 10
    assert states["gone"] == 10


def test_redelivered_batch_creates_nothing_new(runtime: Runtime) -> None:
    """Running the same regenerate message twice (a redelivery) writes no second attempt or
    notification for a reminder already done."""
    populate(runtime.engine, 14, utc_now())
    owner = new_owner()
    with runtime.sessions.begin() as s:
        page = claim_due(s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=100)
    first = regenerate_batch(runtime, page.ids, owner, clock=utc_now)
    attempts, notes = _count(runtime.engine, Attempt), _count(runtime.engine, Notification)
    second = regenerate_batch(runtime, page.ids, owner, clock=utc_now)
    assert first.notifications == notes > 0
    assert second.claimed == 0  # the claim was released on commit: nothing to redo
    assert (_count(runtime.engine, Attempt), _count(runtime.engine, Notification)) == (
        attempts,
        notes,
    )


def test_overlapping_claim_after_lease_expiry_never_duplicates(runtime: Runtime) -> None:
    """A batch whose lease expired and was re-claimed by a second worker: both run, yet each
    (member, episode, reminder) has one outbox row (unique key + claim check)."""
    populate(runtime.engine, 14, utc_now())
    now = utc_now()
    with runtime.sessions.begin() as s:
        a = claim_due(s, now=now, owner="A", lease=timedelta(seconds=1), limit=100)
    later = now + timedelta(seconds=5)
    with runtime.sessions.begin() as s:
        b = claim_due(s, now=later, owner="B", lease=timedelta(minutes=2), limit=100)
    assert sorted(a.ids) == sorted(b.ids)
    stale = regenerate_batch(runtime, a.ids, "A", clock=utc_now)
    fresh = regenerate_batch(runtime, b.ids, "B", clock=utc_now)
    assert stale.claimed == 0
    assert fresh.notifications > 0
    with runtime.engine.connect() as conn:
        dupes = conn.execute(
            select(Notification.idempotency_key)
            .group_by(Notification.idempotency_key)
            .having(func.count() > 1)
        ).all()
    assert dupes == []


def test_dry_run_changes_nothing(runtime: Runtime, sandbox: RunningSandbox) -> None:
    """scan --dry-run lists what would happen and leaves every row and the MX sandbox untouched."""
    populate(runtime.engine, 28, utc_now())
    before = _dump(runtime.engine)
    rows = dry_run(runtime, now=utc_now())
    assert _dump(runtime.engine) == before
    assert sandbox.requests() == []
    generate = [r for r in rows if r.action == "generate"]
    assert len(generate) == 18  # 9 of the 14 kinds reach MX (incl. the two MX refusals)
    app = [r for r in generate if r.channel == "APP"]
    assert app
    assert all(r.redirect for r in app)
    assert not any(r.redirect for r in generate if r.channel == "BROWSER")
    assert {r.skip_why for r in generate} == {
        "stale_data",
        "aggregation_in_progress",
        "recently_aggregated",
    }


def _dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with engine.connect() as conn:
        for table in ("members", "attempts", "notifications", "ops_actions", "scan_runs", "locks"):
            out[table] = [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
    return out


def test_scan_with_reason_and_limit(runtime: Runtime) -> None:
    """--reason claims only members with that reason; --limit caps how many."""
    expected = populate(runtime.engine, 70, utc_now())
    res = scan_now(runtime, trigger="test", reason="abandoned")
    abandoned = [g for g, k in expected.items() if k.reason == "abandoned"]
    assert res["claimed"] == len(abandoned)
    assert set(outbox_by_guid(runtime.engine)) == set(abandoned)
    res2 = scan_now(runtime, trigger="test", limit=7)
    assert res2["claimed"] == 7


def test_second_concurrent_scan_exits_at_once(runtime: Runtime) -> None:
    """While one scan holds the singleton lock, another returns immediately having done nothing."""
    populate(runtime.engine, 14, utc_now())
    with scan_lock(runtime.engine, now=utc_now(), owner="other") as got:
        assert got
        result = run_scan(runtime, lambda ids, owner: None, clock=utc_now, trigger="test")
    assert result.skipped_lock
    assert result.claimed == 0
    result = run_scan(runtime, lambda ids, owner: None, clock=utc_now, trigger="test")
    assert not result.skipped_lock
    assert result.claimed == 14


def test_transient_failures_back_off_and_configuration_errors_spend_nothing(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """500s leave members pending with a backoff; a wrong API key releases every claim without
    spending an attempt and logs one error."""
    populate(runtime.engine, 14, utc_now())
    sandbox.config.update({"rate_500": 1.0, "fault_endpoints": ["nexus"]})
    scan_now(runtime, trigger="test")
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            select(Member.reauth_state, Member.attempts, Member.next_attempt_at).where(
                Member.reauth_state == "pending"
            )
        ).all()
    assert len(rows) == 9  # every kind that reaches MX, the MX refusals included
    assert all(r.attempts == 1 for r in rows)
    assert all(r.next_attempt_at > utc_now() for r in rows)
    assert _count(runtime.engine, Notification) == 0

    sandbox.config.update({"rate_500": 0.0})
    bad = Runtime(
        runtime.settings.model_copy(
            update={"mx_api_key": runtime.settings.mx_api_key.__class__("wrong")}
        )
    )
    try:
        owner = new_owner()
        with bad.sessions.begin() as s:
            ids = list(s.scalars(select(Member.id)))
            claim_due(
                s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=100, member_ids=ids
            )
        res = regenerate_batch(bad, ids, owner, clock=utc_now, force=True)
    finally:
        bad.close()
    assert res.configuration_error is not None
    with runtime.engine.connect() as conn:
        assert conn.scalar(select(func.max(Member.attempts))) == 1
        assert conn.scalar(select(func.count()).where(Member.claim_owner.is_not(None))) == 0


def test_stale_link_is_regenerated_before_delivery(
    runtime: Runtime, sandbox: RunningSandbox, tmp_path: Any
) -> None:
    """An outbox row whose URI is older than REAUTH_LINK_MAX_AGE is regenerated through MX (same
    member, episode and reminder; a 'refresh' attempt row) and the delivered message carries the
    new URI."""
    import json

    from worker.core.contract import format_time
    from worker.service.deliver import deliver

    populate(runtime.engine, 1, utc_now())  # one expired member
    owner = new_owner()
    with runtime.sessions.begin() as s:
        page = claim_due(s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=10)
    regenerate_batch(runtime, page.ids, owner, clock=utc_now)  # no dispatch yet
    with runtime.engine.connect() as conn:
        old_uri = conn.scalar(select(Member.oauth_window_uri))
    # Age the link past REAUTH_LINK_MAX_AGE, as if the relay had been down for a while.
    aged = utc_now() - runtime.settings.link_max_age - timedelta(minutes=1)
    with runtime.sessions.begin() as s:
        note = s.scalars(select(Notification)).one()
        note.payload = {**note.payload, "generated_at": format_time(aged)}
    calls_before = len(sandbox.requests())

    result = deliver(runtime, clock=utc_now, owner="relay")
    assert result["sent"] == 1
    assert result["refreshed"] == 1
    assert len(sandbox.requests()) > calls_before
    delivered = [json.loads(x) for x in (tmp_path / "notifications.jsonl").read_text().splitlines()]
    assert len(delivered) == 1
    assert delivered[0]["oauth_window_uri"] != old_uri
    assert (delivered[0]["episode"], delivered[0]["reminder"]) == (1, 1)
    with runtime.engine.connect() as conn:
        triggers = [t for (t,) in conn.execute(select(Attempt.trigger).order_by(Attempt.id))]
        member_uri = conn.scalar(select(Member.oauth_window_uri))
    assert triggers == ["scan", "refresh"]
    assert member_uri == delivered[0]["oauth_window_uri"]


def test_stale_link_mx_cannot_refresh_costs_an_attempt_and_is_not_delivered(
    runtime: Runtime, sandbox: RunningSandbox, tmp_path: Any
) -> None:
    """When MX fails the refresh, the stale row keeps its old link, is not delivered, and spends
    one delivery attempt (so a link MX keeps refusing ends dead instead of waiting forever); the
    refresh call is recorded as an attempt of the member."""
    from worker.core.contract import format_time
    from worker.service.deliver import deliver

    populate(runtime.engine, 1, utc_now())
    owner = new_owner()
    with runtime.sessions.begin() as s:
        page = claim_due(s, now=utc_now(), owner=owner, lease=timedelta(minutes=2), limit=10)
    regenerate_batch(runtime, page.ids, owner, clock=utc_now)
    aged = utc_now() - runtime.settings.link_max_age - timedelta(minutes=1)
    with runtime.sessions.begin() as s:
        note = s.scalars(select(Notification)).one()
        note.payload = {**note.payload, "generated_at": format_time(aged)}
    sandbox.config.update({"rate_500": 1.0, "fault_endpoints": ["nexus"]})

    result = deliver(runtime, clock=utc_now, owner="relay")

    assert (result["sent"], result["refreshed"]) == (0, 0)
    assert not (tmp_path / "notifications.jsonl").exists()
    with runtime.engine.connect() as conn:
        row = conn.execute(select(Notification.status, Notification.attempts)).one()
        outcomes = [o for (o,) in conn.execute(select(Attempt.outcome).order_by(Attempt.id))]
    assert tuple(row) == ("pending", 1)
    assert outcomes == ["success", "transient"]


def test_metrics_count_attempts_latency_and_scans(runtime: Runtime) -> None:
    """The Prometheus registry shows attempts by outcome, MX latency, members due, outbox backlog
    and scan duration after a scan."""
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("reauth_attempts_total", outcome="success")
    scans_before = value("reauth_scan_duration_seconds_count")
    populate(runtime.engine, 14, utc_now())
    scan_now(runtime, trigger="test")
    assert value("reauth_attempts_total", outcome="success") - before == 7
    assert value("reauth_mx_latency_seconds_count") >= 9
    assert value("reauth_scan_duration_seconds_count") == scans_before + 1
    assert value("reauth_members_due") == 14
    assert value("reauth_outbox_backlog") == 0


def test_heartbeat_keeps_a_slow_batch_claimed_past_its_lease(
    db_url: str, sandbox: RunningSandbox
) -> None:
    """MX answers slower than the claim lease: the batch's heartbeat renews its members' claims,
    so a scan in the middle of the batch takes none of them, and the batch writes them all."""
    from tests.pipeline_helpers import make_settings

    settings = make_settings(
        db_url,
        sandbox,
        claim_lease=timedelta(seconds=3),
        claim_heartbeat=timedelta(seconds=1),
    )
    rt = Runtime(settings, inline=True)
    try:
        populate(rt.engine, 14, utc_now())
        owner = new_owner()
        with rt.sessions.begin() as s:
            page = claim_due(s, now=utc_now(), owner=owner, lease=settings.claim_lease, limit=100)
        sandbox.config.latency = 2.0  # token, session, URI in a row: about 6 s
        taken: list[int] = []

        def competitor() -> None:
            time.sleep(4.5)  # well past the 3 s lease, while MX is still answering
            with rt.sessions.begin() as s:
                other = claim_due(s, now=utc_now(), owner="B", lease=timedelta(1), limit=100)
            taken.extend(other.ids)

        thread = threading.Thread(target=competitor)
        thread.start()
        started = time.monotonic()
        result = regenerate_batch(rt, page.ids, owner, clock=utc_now)
        thread.join()
        assert time.monotonic() - started > 4.5, "the batch should outlive the competitor's try"
        assert taken == [], "a live batch's members were claimed by someone else"
        assert result.outcomes["lease_lost"] == 0
        assert result.notifications > 0
    finally:
        rt.close()


def test_claim_sweeper_rescans_only_when_a_claim_ran_out(runtime: Runtime) -> None:
    """Beat's claim sweeper does nothing while claims are live; once a dead worker's claims
    have run out it scans at once, and the members are processed."""
    from worker.app import jobs

    populate(runtime.engine, 14, utc_now())
    now = utc_now()
    with runtime.sessions.begin() as s:
        dead = claim_due(s, now=now, owner="dead", lease=timedelta(seconds=1), limit=100)
    assert jobs.sweep_claims(runtime, clock=lambda: now) is None
    later = now + timedelta(seconds=2)
    result = jobs.sweep_claims(runtime, clock=lambda: later)
    assert result is not None
    assert result.claimed == len(dead.ids)
    assert _count(runtime.engine, Notification) > 0
    assert jobs.sweep_claims(runtime, clock=lambda: later) is None


def test_pages_waiting_in_the_queue_are_not_reclaimed_by_the_sweeper(
    db_url: str, sandbox: RunningSandbox
) -> None:
    """A scan that queues its pages gives them REAUTH_CLAIM_QUEUED_LEASE (nobody renews a
    page waiting in the queue): a backlog longer than REAUTH_CLAIM_LEASE is not claimed and
    queued a second time by the sweeper; a page whose message was lost is taken again once the
    queued lease has run out. An inline scan, which starts each page at once, keeps the short
    lease."""
    from tests.pipeline_helpers import make_settings
    from worker.service import scan

    settings = make_settings(
        db_url,
        sandbox,
        batch_size=5,
        claim_lease=timedelta(seconds=30),
        claim_queued_lease=timedelta(minutes=10),
    )
    queued = Runtime(settings)  # Celery follow-ups: pages wait in the queue
    try:
        populate(queued.engine, 12, utc_now())
        now = utc_now()
        pages: list[list[int]] = []
        result = run_scan(queued, lambda ids, _owner: pages.append(ids), clock=lambda: now)
        assert result.claimed == 12
        assert len(pages) == 3
        again: list[list[int]] = []

        def hand_on(ids: list[int], _owner: str) -> None:
            again.append(ids)

        # Past the short lease, the queued pages are still theirs: nothing to sweep.
        past_lease = now + settings.claim_lease + timedelta(seconds=1)
        assert scan.sweep(queued, hand_on, clock=lambda: past_lease) is None
        # The messages were lost: once the queued lease runs out the sweeper takes them again.
        past_queue = now + settings.claim_queued_lease + timedelta(seconds=1)
        swept = scan.sweep(queued, hand_on, clock=lambda: past_queue)
        assert swept is not None
        assert swept.claimed == 12
        assert sorted(i for page in again for i in page) == sorted(i for p in pages for i in p)
        with queued.engine.connect() as conn:
            expiries = set(conn.execute(select(Member.claim_expires_at)).scalars())
        assert len(expiries) == 1
        (expiry,) = expiries
        assert expiry is not None
        assert abs(_aware(expiry) - (past_queue + settings.claim_queued_lease)).total_seconds() < 1
    finally:
        queued.close()
    inline = Runtime(settings, inline=True)
    try:
        assert inline.handoff_lease == settings.claim_lease
        assert queued.handoff_lease == settings.claim_queued_lease
    finally:
        inline.close()


def _aware(t: Any) -> Any:
    """SQLite gives naive UTC datetimes back; PostgreSQL aware ones."""
    from datetime import UTC

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _age_episode(runtime: Runtime, hours: int) -> None:
    """Move the member's episode back in time, so its next reminder is due now."""
    started = utc_now() - timedelta(hours=hours)
    with runtime.engine.begin() as conn:
        conn.execute(
            Member.__table__.update().values(episode_started_at=started, next_attempt_at=utc_now())
        )


def test_reminder_to_a_member_mx_reports_connected_ends_the_episode(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    """Before reminder 2, MX is asked: the member is CONNECTED again, so no reminder goes out
    and the episode ends (idle); the first message was sent without such a read."""
    populate(runtime.engine, 1, utc_now())
    scan_now(runtime, trigger="test")
    assert _count(runtime.engine, Notification) == 1
    _age_episode(runtime, 25)
    sandbox.sandbox.set_member_state("MBR-000000", connection_status="CONNECTED")
    scan_now(runtime, trigger="test")
    assert _count(runtime.engine, Notification) == 1
    with runtime.engine.connect() as conn:
        assert conn.scalar(select(Member.reauth_state)) == "idle"
    reads = [r for r in sandbox.requests() if r["path"].endswith("/members/MBR-000000")]
    assert len(reads) == 1


def test_reminder_goes_out_when_mx_still_reports_the_member_broken(
    runtime: Runtime, sandbox: RunningSandbox
) -> None:
    populate(runtime.engine, 1, utc_now())
    scan_now(runtime, trigger="test")
    _age_episode(runtime, 25)
    sandbox.sandbox.set_member_state("MBR-000000", connection_status="EXPIRED")
    scan_now(runtime, trigger="test")
    assert _count(runtime.engine, Notification) == 2
