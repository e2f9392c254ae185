"""The measurements: pipeline end to end, the naive baseline, the raw ceiling, the due query.

Each function sets up what it needs on the benchmark database and Redis db, runs one bounded
measurement and returns a plain dict (the rows of ``bench/results.json``).
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, select, text
from sqlalchemy.dialects import postgresql

from bench import infra
from bench.ceiling import raw_ceiling
from worker.app.celery_app import DELIVER_TASK, EVENTS_QUEUE, QUEUE, SCAN_TASK
from worker.clock import utc_now


def _sender() -> Celery:
    # A bare app on the same broker: beat sends reauth.scan exactly like this (by name).
    return Celery("bench-sender", broker=infra.REDIS_URL)


def warm_up(
    sender: Celery,
    processes: int,
    *,
    events_worker: bool = True,
    tasks: tuple[str, ...] = (DELIVER_TASK,),
) -> None:
    """Let every pool process of the workers run each of ``tasks`` once or twice, cheaply
    (nothing pending: a relay pass, an apply pass), so imports, the engine and first-use costs
    are not timed. Sent to the main queue for the main worker's pool, which runs them by name."""
    queues = [(QUEUE, processes * 2)] + ([(EVENTS_QUEUE, 2)] if events_worker else [])
    for queue, times in queues:
        for _ in range(times):
            for task in tasks:
                sender.send_task(task, queue=queue)
    infra.wait_queue_empty()


def sender() -> Celery:
    """A bare app on the benchmark's broker (what beat is to the workers)."""
    return _sender()


def pipeline(
    db_url: str,
    sandbox: infra.Sandbox,
    *,
    total: int,
    due: int,
    users: int,
    latency: float,
    processes: int,
    mx_concurrency: int,
    batch_size: int,
    logs: Path,
    timeout: float,
    api: str = "nexus",
    due_users: int | None = None,
) -> dict[str, Any]:
    """`reauth.scan` → prefork worker → sandbox → DB → outbox → Redis Stream, timed to XLEN.

    ``api``: REAUTH_MX_API (``nexus``: a session per user, two extra MX calls per new user;
    ``platform``: Basic auth, one call per member). ``due_users``: the due members' own users
    (see :func:`infra.seed_members`), else ``users`` over all members.
    """
    infra.reset_tables(db_url)
    infra.flush_redis()
    now = utc_now()
    infra.seed_members(db_url, total=total, due=due, now=now, users=users, due_users=due_users)
    sandbox.configure(latency=latency)
    sandbox.clear_log()
    env = infra.reauth_env(
        db_url,
        sandbox,
        REAUTH_MX_API=api,
        REAUTH_MX_MAX_CONCURRENCY=str(mx_concurrency),
        REAUTH_BATCH_SIZE=str(batch_size),
    )
    sender = _sender()
    label = f"pipeline-{api}-{latency}-{mx_concurrency}-{due}"
    # The 2-core profile: one worker, both queues, events first (a dedicated events worker
    # adds a Celery tree, ~130 MB PSS, and no core to run it on here).
    with infra.reauth_workers(
        env, processes=processes, logs=logs, name=label, events_worker=False
    ) as procs:
        warm_up(sender, processes, events_worker=False)
        before = sandbox.stats()
        with infra.PeakRss(*(p.pid for p in procs)) as rss:
            started = time.perf_counter()
            sender.send_task(SCAN_TASK, queue=QUEUE, kwargs={"trigger": "bench"})
            got, ended = infra.wait_stream(infra.STREAM, due, timeout=timeout)
        after = sandbox.stats()
    sender.close()
    # MX requests the run made (SSO API tokens, Nexus sessions, OAuth windows).
    calls = {
        k: after.get(k, 0) - before.get(k, 0)
        for k in ("api_tokens_issued", "sessions_created", "uris")
    }
    elapsed = ended - started
    cpu_s = rss.cpu_s
    sent = infra.scalar(db_url, "SELECT count(*) FROM notifications WHERE status = 'sent'")
    return {
        "kind": "pipeline",
        "api": api,
        "latency_s": latency,
        "members": due,
        "users": due_users or users,
        "mx_calls": sum(calls.values()),
        "mx_calls_per_s": round(sum(calls.values()) / elapsed, 1),
        "sessions_created": calls["sessions_created"],
        "total_members": total,
        "delivered": got,
        "complete": got >= due,
        "outbox_sent": sent,
        "seconds": round(elapsed, 3),
        "per_s": round(got / elapsed, 1),
        "processes": processes,
        "mx_concurrency": mx_concurrency,
        "batch_size": batch_size,
        "in_flight": processes * min(mx_concurrency, batch_size),
        # The figure that travels between machines: the worker trees' CPU time per member
        # (both workers of the production profile, main and events, with their pool
        # children; start-up and warm-up excluded).
        "cpu_s": round(cpu_s, 2),
        "cpu_ms_per_member": round(cpu_s * 1000 / got, 3) if got else None,
        "peak_rss_mb": rss.peak_mb,
        "peak_pss_mb": rss.peak_pss_mb,
    }


def naive(
    db_url: str,
    sandbox: infra.Sandbox,
    *,
    sample: int,
    users: int,
    latency: float,
    processes: int,
    logs: Path,
    timeout: float,
) -> dict[str, Any]:
    """One Celery task per member (bench/naive.py) on ``sample`` eligible members."""
    from bench import naive as naive_app

    infra.reset_tables(db_url)
    infra.flush_redis()
    infra.seed_members(
        db_url,
        total=sample,
        due=sample,
        now=utc_now(),
        users=users,
        prefix="NAIVE",
        due_due=False,
    )
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM members ORDER BY id"))]
    engine.dispose()
    sandbox.configure(latency=latency)
    sandbox.clear_log()
    env = infra.reauth_env(db_url, sandbox)
    label = f"naive-{latency}"
    naive_app.app.conf.broker_url = infra.REDIS_URL
    with infra.celery_worker(
        env,
        app="bench.naive",
        queue=naive_app.QUEUE,
        concurrency=processes,
        log=logs / f"{label}.log",
        name=label,
    ) as proc:
        infra.wait_pool_ready(proc, processes)
        started = time.perf_counter()
        naive_app.enqueue(ids)
        got, ended = infra.wait_stream(naive_app.STREAM, len(ids), timeout=timeout)
    elapsed = ended - started
    return {
        "kind": "naive",
        "latency_s": latency,
        "members": len(ids),
        "delivered": got,
        "complete": got >= len(ids),
        "seconds": round(elapsed, 3),
        "per_s": round(got / elapsed, 1),
        "processes": processes,
        "in_flight": processes,
    }


def ceiling(
    sandbox: infra.Sandbox, *, latency: float, in_flight: int, requests: int, api: str = "nexus"
) -> dict[str, Any]:
    sandbox.configure(latency=latency)
    sandbox.clear_log()
    res = raw_ceiling(sandbox.base_url, in_flight=in_flight, requests=requests, api=api)
    return {"kind": "raw", "api": api, "latency_s": latency, "in_flight": in_flight, **res}


# --- the due query --------------------------------------------------------------------------------


def _due_select(now: datetime, limit: int, after: tuple[datetime, int] | None = None) -> Any:
    """The select inside ``members.claim_due`` (same clause, same order, same keyset)."""
    from sqlalchemy import and_

    from models import Member
    from worker.store.members import after_clause, due_clause

    cond = due_clause(now)
    if after is not None:
        cond = and_(cond, after_clause(after))
    return (
        select(Member.id, Member.next_attempt_at)
        .where(cond)
        .order_by(Member.next_attempt_at, Member.id)
        .limit(limit)
    )


def _sql(stmt: Any) -> str:
    return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def due_query(db_url: str, *, total: int, due: int, repeats: int = 5) -> dict[str, Any]:
    """Time fetching every due id among ``total`` members, and show the plan.

    Three measurements, each the median of ``repeats`` warm runs:

    * ``one_query_ms``: the select with ``LIMIT due`` (all due ids in one statement);
    * ``keyset_100_ms``: the same walk the scan does, pages of 100 by (next_attempt_at, id);
    * ``claim_pages_ms``: the scan's real claim statement (``members.claim_due``: UPDATE …
      WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING), pages of 100, one transaction
      each, as ``run_scan`` does (run once, since it claims the rows).
    """
    from sqlalchemy.orm import Session

    from worker.store import leases
    from worker.store import members as repo

    infra.reset_tables(db_url)
    now = utc_now()
    t0 = time.perf_counter()
    infra.seed_members(db_url, total=total, due=due, now=now, users=1000)
    seed_s = time.perf_counter() - t0
    engine = create_engine(db_url)
    one, keyset = [], []
    with engine.connect() as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + _sql(_due_select(now, due))))
        )
        for _ in range(repeats):
            t = time.perf_counter()
            n = len(conn.execute(_due_select(now, due)).all())
            one.append((time.perf_counter() - t) * 1000)
            assert n == due, (n, due)
        for _ in range(repeats):
            t = time.perf_counter()
            after, n = None, 0
            while True:
                rows = conn.execute(_due_select(now, 100, after)).all()
                if not rows:
                    break
                n += len(rows)
                after = (rows[-1].next_attempt_at, rows[-1].id)
            keyset.append((time.perf_counter() - t) * 1000)
            assert n == due, (n, due)
        conn.rollback()
    claim_plan = ""
    with Session(engine) as s:
        # The claim statement's own plan, rolled back.
        stmt = text(
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE members SET claim_owner = 'x' WHERE id IN ("
            + _sql(_due_select(now, 100)).replace(
                "SELECT members.id, members.next_attempt_at", "SELECT members.id"
            )
            + " FOR UPDATE SKIP LOCKED)"
        )
        claim_plan = "\n".join(r[0] for r in s.execute(stmt))
        s.rollback()
    t = time.perf_counter()
    after, claimed = None, 0
    lease = timedelta(minutes=2)
    while True:
        with Session(engine) as s, s.begin():
            page = repo.claim_due(
                s, now=now, owner=leases.new_owner(), lease=lease, limit=100, after=after
            )
        if not page.ids:
            break
        claimed += len(page.ids)
        after = page.last
        if after is None:
            break
    claim_ms = (time.perf_counter() - t) * 1000
    engine.dispose()
    uses_index = "ix_members_due" in plan and "Seq Scan" not in plan
    server_ms = next(
        (
            float(line.split(":")[1].split()[0])
            for line in plan.splitlines()
            if line.strip().startswith("Execution Time")
        ),
        None,
    )
    return {
        "kind": "due_query",
        "total_members": total,
        "due": due,
        "seed_s": round(seed_s, 1),
        "one_query_ms": round(statistics.median(one), 2),
        "explain_execution_ms": server_ms,
        "keyset_100_ms": round(statistics.median(keyset), 2),
        "claim_pages_ms": round(claim_ms, 1),
        "claimed": claimed,
        "uses_index": uses_index,
        "claim_uses_index": "ix_members_due" in claim_plan and "Seq Scan" not in claim_plan,
        "plan": plan,
        "claim_plan": claim_plan,
    }
