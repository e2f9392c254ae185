"""Retention: ``reauth purge`` and the beat task delete old rows in bounded batches, keep fresh
and pending ones, and clear links that can no longer be useful (keeping a fingerprint)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, select, text

from models import (
    Attempt,
    Click,
    Episode,
    FunnelEvent,
    Member,
    Notification,
    OpsAction,
    ScanRun,
    WebhookEvent,
)
from tests.pipeline_helpers import cli
from worker.config import Settings, load_settings
from worker.errors import ConfigError
from worker.logging import fingerprint_uri
from worker.runtime import Runtime
from worker.service import retention
from worker.store import retention as store
from worker.store.db import make_engine

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=200)
FRESH = NOW - timedelta(days=1)
URI = "https://int-widgets.moneydesktop.com/oauth/predirect_to/MBR-x/secret-token?x=1"


def _clock() -> datetime:
    return NOW


@pytest.fixture
def rt(db_url: str) -> Iterator[Runtime]:
    runtime = Runtime(load_settings(database_url=db_url, retention_batch_size=2))
    yield runtime
    runtime.close()


def _member(engine: Engine, guid: str = "MBR-x", **extra: Any) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Member)
                .values(
                    member_guid=guid, user_guid="USR-x", institution_code="chase", is_oauth=True,
                    channel="BROWSER", is_being_aggregated=False, reauth_state="idle", episode=1,
                    reminders_sent=1, attempts=0, created_at=OLD, updated_at=OLD, **extra,
                )
                .returning(Member.id)
            ).scalar_one()
        )  # fmt: skip


def _payload(uri: str | None = URI) -> dict[str, Any]:
    return {"member_guid": "MBR-x", "episode": 1, "reminder": 1, "oauth_window_uri": uri,
            "generated_at": "2026-01-01T00:00:00Z", "reason": "revoked"}  # fmt: skip


def _notification(
    engine: Engine, member_id: int, status: str, at: datetime, sent_at: datetime | None = None
) -> uuid.UUID:
    nid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            insert(Notification).values(
                id=nid, idempotency_key=f"k-{nid}", member_id=member_id, payload=_payload(),
                status=status, attempts=1, sent_at=sent_at, created_at=at, updated_at=at,
            )
        )  # fmt: skip
    return nid


def _attempt(engine: Engine, member_id: int, at: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Attempt).values(
                member_id=member_id, episode=1, reminder=1, trigger="scan", mx_api="nexus",
                referral_source="BROWSER", skip_aggregation=False, skip_aggregation_why="x",
                outcome="success", created_at=at,
            )
        )  # fmt: skip


def _world(engine: Engine) -> dict[str, Any]:
    """Two of each kind old, one fresh; plus old pending rows that must stay."""
    mid = _member(engine)
    ids: dict[str, Any] = {"member": mid}
    for status in ("sent", "dead", "canceled"):
        for at in (OLD, OLD, FRESH):
            _notification(engine, mid, status, at, sent_at=at if status == "sent" else None)
    ids["pending"] = _notification(engine, mid, "pending", OLD)
    for at in (OLD, OLD, FRESH):
        _attempt(engine, mid, at)
    with engine.begin() as conn:
        for at in (OLD, OLD, FRESH):
            conn.execute(
                insert(Click).values(
                    id=uuid.uuid4(), member_id=mid, notification_id=ids["pending"], episode=1,
                    outcome="minted", referral_source="BROWSER", created_at=at,
                )
            )  # fmt: skip
            conn.execute(
                insert(OpsAction).values(
                    actor="op", command="rerun", arguments={}, created_at=at - timedelta(days=200)
                )
            )
            conn.execute(
                insert(ScanRun).values(
                    trigger="beat", started_at=at, claimed=0, batches=0, skipped_lock=False,
                    interrupted=False,
                )
            )  # fmt: skip
        for n, (at, status) in enumerate(
            [(OLD, "applied"), (OLD, "rejected"), (FRESH, "applied"), (OLD, "pending")]
        ):
            conn.execute(
                insert(WebhookEvent).values(
                    event_type="MEMBER", digest=f"d{n}", body=b"{}", status=status, duplicates=0,
                    attempts=0, received_at=at,
                )
            )  # fmt: skip
        # Episode summaries are kept 400 days by default: "old" for them is older still.
        for n, at in enumerate((OLD - timedelta(days=400), OLD - timedelta(days=400), FRESH)):
            conn.execute(
                insert(FunnelEvent).values(member_id=mid, episode=n, stage="detected", at=at)
            )
            conn.execute(
                insert(Episode).values(
                    member_id=mid, episode=n, detected_at=at, detected_how="scan",
                    reminders_sent=0,
                )
            )  # fmt: skip
    return ids


def _count(engine: Engine, model: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_purge_deletes_old_rows_in_bounded_batches_and_keeps_fresh_ones(rt: Runtime) -> None:
    """Every kind loses its old rows, in batches of at most REAUTH_RETENTION_BATCH_SIZE; fresh
    rows and pending notifications (however old) stay."""
    _world(rt.engine)
    result = retention.purge(rt, clock=_clock)
    assert result.complete
    by_name = {k.name: k for k in result.kinds}
    assert {n: k.rows for n, k in by_name.items()} == {
        "clicks": 2, "attempts": 2, "notifications_sent": 2, "notifications_dead": 2,
        "notifications_canceled": 2, "ops_actions": 2, "scan_runs": 2, "webhook_events": 2,
        "funnel_events": 2, "episodes": 2,
    }  # fmt: skip
    for k in result.kinds:
        assert k.max_batch <= 2
        # Two full batches and a last empty one that says "done".
        assert k.batches == 2
    for status in ("sent", "dead", "canceled"):
        assert _count(rt.engine, Notification, Notification.status == status) == 1
    assert _count(rt.engine, Notification, Notification.status == "pending") == 1
    for model in (Attempt, Click, OpsAction, ScanRun, FunnelEvent, Episode):
        assert _count(rt.engine, model) == 1
    assert _count(rt.engine, Member) == 1
    # The fresh webhook event and the old pending one (still to be applied) stay.
    assert _count(rt.engine, WebhookEvent) == 2
    # Nothing left: a second run deletes nothing.
    again = retention.purge(rt, clock=_clock)
    assert all(k.rows == 0 for k in again.kinds)


def test_dry_run_counts_and_changes_nothing(rt: Runtime) -> None:
    _world(rt.engine)
    dry = retention.purge(rt, clock=_clock, dry_run=True)
    assert {k.name: k.rows for k in dry.kinds}["attempts"] == 2
    assert dry.links.rows == 3  # the sent rows delivered before NOW - 10m
    assert _count(rt.engine, Attempt) == 3
    real = retention.purge(rt, clock=_clock)
    assert [k.rows for k in real.kinds] == [k.rows for k in dry.kinds]


def test_retention_zero_keeps_a_kind_forever(db_url: str) -> None:
    settings = load_settings(database_url=db_url, retention_attempts=0)
    with _runtime(settings) as rt:
        _world(rt.engine)
        result = retention.purge(rt, clock=_clock)
        assert {k.name: k.cutoff for k in result.kinds}["attempts"] is None
        assert _count(rt.engine, Attempt) == 3


def test_a_deadline_stops_the_run_and_the_next_run_goes_on(rt: Runtime) -> None:
    _world(rt.engine)
    stopped = retention.purge(rt, clock=_clock, deadline=time.monotonic())
    assert not stopped.complete
    assert _count(rt.engine, Attempt) == 3
    assert retention.purge(rt, clock=_clock).complete
    assert _count(rt.engine, Attempt) == 1


def test_sent_links_are_replaced_by_their_fingerprint(rt: Runtime) -> None:
    """REAUTH_LINK_MAX_AGE after delivery the stored URI is null and its fingerprint is kept;
    the other payload fields stay. Links delivered recently and pending rows keep theirs."""
    mid = _member(rt.engine, oauth_window_uri=URI, uri_generated_at=NOW - timedelta(minutes=30))
    old = _notification(rt.engine, mid, "sent", OLD, sent_at=NOW - timedelta(minutes=11))
    recent = _notification(rt.engine, mid, "sent", OLD, sent_at=NOW - timedelta(minutes=9))
    pending = _notification(rt.engine, mid, "pending", OLD)
    keep_rows = rt.settings.model_copy(update={"retention_notifications_sent": timedelta(0)})
    with _runtime(keep_rows) as other:
        result = retention.purge(other, clock=_clock)
    assert result.links.rows == 1
    assert result.member_links.rows == 1  # generated 30m ago > 2 x 10m
    with rt.engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(select(Notification.id, Notification.payload,
                                         Notification.link_cleared_at))
        }  # fmt: skip
        member_uri = conn.scalar(select(Member.oauth_window_uri))
    cleared = rows[old].payload
    assert cleared["oauth_window_uri"] is None
    assert cleared["oauth_window_uri_fingerprint"] == fingerprint_uri(URI)
    assert "secret-token" not in str(cleared)
    assert {k: v for k, v in cleared.items() if not k.startswith("oauth_window_uri")} == {
        k: v for k, v in _payload().items() if k != "oauth_window_uri"
    }
    assert rows[old].link_cleared_at == NOW
    assert rows[recent].payload["oauth_window_uri"] == URI
    assert rows[pending].payload["oauth_window_uri"] == URI
    assert member_uri is None
    # Cleared rows leave the partial index: the next run finds nothing to clear.
    assert retention.purge(rt, clock=_clock).links.rows == 0


def test_a_member_link_younger_than_twice_the_max_age_is_kept(rt: Runtime) -> None:
    _member(rt.engine, oauth_window_uri=URI, uri_generated_at=NOW - timedelta(minutes=15))
    assert retention.purge(rt, clock=_clock).member_links.rows == 0
    with rt.engine.connect() as conn:
        assert conn.scalar(select(Member.oauth_window_uri)) == URI


@pytest.mark.postgres
def test_every_batch_statement_reads_an_index(pg_url: str) -> None:
    """EXPLAIN of each batch statement names the index it needs (a missing index would show a
    sequential scan even with sequential scans discouraged)."""
    engine = make_engine(pg_url)
    expected = {
        "clicks": "ix_clicks_created_at",
        "attempts": "ix_attempts_created_at",
        "notifications_sent": "ix_notifications_status_created",
        "notifications_dead": "ix_notifications_status_created",
        "notifications_canceled": "ix_notifications_status_created",
        "ops_actions": "ix_ops_actions_created_at",
        "scan_runs": "ix_scan_runs_started_at",
        "webhook_events": "ix_webhook_events_received_at",
        "funnel_events": "ix_funnel_events_at",
        "episodes": "ix_episodes_detected_at",
    }
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            from sqlalchemy.orm import Session

            session = Session(bind=conn)
            for name, index in expected.items():
                plan = _explain(conn, session, store.KINDS[name])
                assert index in plan, (name, plan)
                assert "Seq Scan" not in plan, (name, plan)
            links = select(Notification.id).where(*store._live_links(NOW)).limit(10)
            assert "ix_notifications_live_link" in _plan(conn, links.order_by("sent_at"))
            members = select(Member.id).where(*store._member_links(NOW)).limit(10)
            assert "ix_members_live_link" in _plan(conn, members.order_by(Member.uri_generated_at))
            # Deleting a notification cascades to its clicks through an index.
            plan = "\n".join(
                conn.exec_driver_sql(
                    "EXPLAIN SELECT 1 FROM clicks WHERE notification_id = gen_random_uuid()"
                ).scalars()
            )
            assert "ix_clicks_notification_id" in plan
            # The second statement of a batch: the ids through the primary key.
            plan = _plan(conn, delete(Attempt).where(Attempt.id.in_(list(range(1, 1001)))))
            assert "pk_attempts" in plan
            conn.rollback()
    finally:
        engine.dispose()


def _plan(conn: Any, stmt: Any) -> str:
    compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
    return "\n".join(conn.execute(text(f"EXPLAIN {compiled}")).scalars())


def _explain(conn: Any, session: Any, kind: store.Kind) -> str:
    return _plan(conn, store.oldest(kind, NOW, 1000))


# --- settings, beat, CLI -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["90", "12h", "3651d", "-1d"])
def test_a_retention_below_a_day_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A bare number is seconds: "90" would purge nearly everything, so it is refused."""
    monkeypatch.setenv("REAUTH_RETENTION_ATTEMPTS", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "REAUTH_RETENTION_ATTEMPTS" in str(info.value)


def test_retention_settings_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REAUTH_RETENTION_ATTEMPTS", "0")
    monkeypatch.setenv("REAUTH_RETENTION_CLICKS", "30d")
    monkeypatch.setenv("REAUTH_RETENTION_INTERVAL", "15m")
    s = load_settings()
    assert s.retention_attempts == timedelta(0)
    assert s.retention_clicks == timedelta(days=30)
    assert s.retention_interval == timedelta(minutes=15)
    assert s.retention_ops_actions == timedelta(days=365)


def test_beat_runs_the_purge() -> None:
    from worker.app.celery_app import PURGE_TASK, create_app

    app = create_app()
    entry = app.conf.beat_schedule["reauth-purge"]
    assert entry["task"] == PURGE_TASK
    assert entry["schedule"] == 3600
    app.loader.import_default_modules()
    assert PURGE_TASK in app.tasks


def test_the_purge_job_has_a_deadline(rt: Runtime) -> None:
    from worker.app import jobs

    _world(rt.engine)
    result = jobs.purge(rt, clock=_clock)
    assert result.complete
    assert _count(rt.engine, Attempt) == 1


def test_cli_purge_dry_run_then_purge(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(env)
    try:
        mid = _member(engine)
        for at in (datetime.now(UTC) - timedelta(days=100), datetime.now(UTC)):
            _attempt(engine, mid, at)
        code, dry = cli(capsys, "purge", "--dry-run", "--json")
        assert code == 0, dry
        assert dry["dry_run"] is True
        assert {k["name"]: k["rows"] for k in dry["kinds"]}["attempts"] == 1
        assert _count(engine, Attempt) == 2
        assert _count(engine, OpsAction) == 0
        code, done = cli(capsys, "purge", "--json", "--actor", "alice")
        assert code == 0, done
        assert {k["name"]: k["rows"] for k in done["kinds"]}["attempts"] == 1
        assert _count(engine, Attempt) == 1
        with engine.connect() as conn:
            action = conn.execute(select(OpsAction)).one()
        assert (action.actor, action.command) == ("alice", "purge")
        assert action.result["attempts"] == 1
        code, out = cli(capsys, "purge")
        assert code == 0
        assert "attempts" in out
        assert "kept forever" not in out
    finally:
        engine.dispose()


class _runtime:
    def __init__(self, settings: Settings) -> None:
        self.rt = Runtime(settings)

    def __enter__(self) -> Runtime:
        return self.rt

    def __exit__(self, *_: object) -> None:
        self.rt.close()
