"""The benchmark's wait timings (worker.waits, bench.waits): off by default, and when on, the
claim statement notes its time and the summary computes the distribution per kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from bench.waits import summarise
from models import Member
from worker import waits
from worker.store import members

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_off_by_default_and_noting_writes_nothing(tmp_path: Path) -> None:
    assert waits.FILE is None  # the test environment does not set REAUTH_WAITS_FILE
    waits.note("claim:members", 0.5)
    assert not list(tmp_path.iterdir())


def test_a_claim_notes_its_time_and_the_summary_reads_it(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "waits.tsv"
    monkeypatch.setattr(waits, "FILE", str(out))
    with sessions.begin() as s:
        s.execute(
            insert(Member),
            [
                {
                    "member_guid": f"MBR-{i}",
                    "user_guid": "USR-1",
                    "institution_code": "chase",
                    "is_oauth": True,
                    "reauth_state": "pending",
                    "next_attempt_at": NOW - timedelta(minutes=1),
                }
                for i in range(5)
            ],
        )
    with sessions.begin() as s:
        page = members.claim_due(s, now=NOW, owner="o", lease=timedelta(minutes=5), limit=3)
    assert len(page.ids) == 3
    waits.note("rate_limiter", 0.010)
    waits.note("rate_limiter", 0.030)
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    assert [k for k, _, _ in lines] == ["claim:members", "rate_limiter", "rate_limiter"]
    assert 0 < float(lines[0][2]) < 60
    got = summarise(out, wall=1.0, processes=2)
    assert got["rate_limiter"]["n"] == 2
    assert got["rate_limiter"]["max_ms"] == 30.0
    assert got["rate_limiter"]["total_s"] == 0.04
    assert got["rate_limiter"]["share"] == 0.02
    assert got["rate_limiter"]["p50_ms"] == 20.0
