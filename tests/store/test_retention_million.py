"""Retention at scale on PostgreSQL: 1,000,000 old attempts are deleted in bounded batches
through the time index, and fresh rows are left alone.

Measured per DELETE statement (each its own transaction): how many rows it removed and how long
it ran, which is how long it held its row locks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, text

from models import Attempt, Member
from worker.config import load_settings
from worker.runtime import Runtime
from worker.service import retention
from worker.store import retention as store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

OLD_ROWS = 1_000_000
FRESH_ROWS = 1_000
BATCH = 10_000


def test_a_million_old_attempts_go_in_bounded_batches(pg_url: str) -> None:
    now = datetime.now(UTC)
    rt = Runtime(load_settings(database_url=pg_url, retention_batch_size=BATCH))
    try:
        with rt.engine.begin() as conn:
            mid = conn.execute(
                insert(Member)
                .values(member_guid="MBR-old", user_guid="USR-old", institution_code="chase",
                        is_oauth=True, channel="BROWSER", is_being_aggregated=False,
                        reauth_state="idle", episode=1, reminders_sent=0, attempts=0,
                        created_at=now, updated_at=now)
                .returning(Member.id)
            ).scalar_one()  # fmt: skip
            started = time.monotonic()
            for count, age in ((OLD_ROWS, "200 days"), (FRESH_ROWS, "1 day")):
                conn.execute(
                    text(
                        "INSERT INTO attempts (member_id, episode, reminder, trigger, mx_api, "
                        "referral_source, skip_aggregation, skip_aggregation_why, redirect_used, "
                        "outcome, created_at) "
                        "SELECT :mid, 1, 1, 'scan', 'nexus', 'BROWSER', false, 'x', false, "
                        "'success', now() - CAST(:age AS interval) - make_interval(secs => g) "
                        "FROM generate_series(1, :n) AS g"
                    ),
                    {"mid": mid, "n": count, "age": age},
                )
        inserted_s = time.monotonic() - started
        with rt.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE attempts")

        # With real statistics, a batch reads the time index and deletes by primary key.
        kind = store.KINDS["attempts"]
        with rt.engine.connect() as conn:
            pick = _plan(conn, store.oldest(kind, now - timedelta(days=90), BATCH))
            ids = list(conn.scalars(store.oldest(kind, now - timedelta(days=90), BATCH)))
            remove = _plan(conn, delete(Attempt).where(Attempt.id.in_(ids)))
        assert "ix_attempts_created_at" in pick, pick
        assert "pk_attempts" in remove, remove
        for plan in (pick, remove):
            assert "Seq Scan" not in plan, plan

        deletes: list[tuple[int, float]] = []

        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            conn.info["t0"] = time.perf_counter()

        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE FROM ATTEMPTS"):
                deletes.append((cursor.rowcount, time.perf_counter() - conn.info["t0"]))

        event.listen(rt.engine, "before_cursor_execute", before)
        event.listen(rt.engine, "after_cursor_execute", after)
        started = time.monotonic()
        result = retention.purge(rt, clock=lambda: now)
        purge_s = time.monotonic() - started

        attempts = {k.name: k for k in result.kinds}["attempts"]
        assert result.complete
        assert attempts.rows == OLD_ROWS
        assert max(n for n, _ in deletes) == BATCH
        assert all(n <= BATCH for n, _ in deletes)
        # The last batch found nothing to pick and issued no DELETE.
        assert len(deletes) == OLD_ROWS // BATCH
        with rt.engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT count(*), min(created_at) FROM attempts").one()
        assert left[0] == FRESH_ROWS
        assert left[1] > now - timedelta(days=2)
        longest = max(s for _, s in deletes)
        print(
            f"\ninserted {OLD_ROWS + FRESH_ROWS} rows in {inserted_s:.1f}s; purged {OLD_ROWS} "
            f"in {purge_s:.1f}s, {len(deletes)} DELETEs of at most {BATCH} rows, longest "
            f"{longest * 1000:.0f} ms, median "
            f"{sorted(s for _, s in deletes)[len(deletes) // 2] * 1000:.0f} ms"
        )
        # Each batch holds its locks for well under a second (a generous bound for CI).
        assert longest < 5
    finally:
        rt.close()


def _plan(conn: Any, stmt: Any) -> str:
    compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
    return "\n".join(conn.execute(text(f"EXPLAIN {compiled}")).scalars())
