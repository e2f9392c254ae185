"""Erasure: ``reauth forget`` leaves no row naming the person, one audit row without personal
data, is idempotent, and a member that comes back starts afresh."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

import models
from models import Member, Notification, OpsAction
from tests.pipeline_helpers import cli
from worker.store.db import make_engine


def _row(guid: str, user: str) -> dict[str, Any]:
    return {"member_guid": guid, "user_guid": user, "institution_code": "chase",
            "is_oauth": True, "connection_status": "EXPIRED"}  # fmt: skip


def _import(capsys: pytest.CaptureFixture[str], tmp_path: Path, *rows: dict[str, Any]) -> None:
    f = tmp_path / f"members-{uuid.uuid4().hex[:6]}.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = cli(capsys, "members", "import", str(f), "--json")
    assert code == 0, out


def _everything(engine: Engine) -> str:
    """Every row of every table, as text."""
    parts = []
    with engine.connect() as conn:
        for table in models.Base.metadata.sorted_tables:
            parts += [f"{table.name}: {tuple(r)}" for r in conn.execute(select(table))]
    return "\n".join(parts)


def _sha(guid: str) -> str:
    return "sha256:" + hashlib.sha256(guid.encode()).hexdigest()


@pytest.fixture
def engine(env: str) -> Any:
    eng = make_engine(env)
    yield eng
    eng.dispose()


def _busy_member(capsys: pytest.CaptureFixture[str], engine: Engine, guid: str) -> None:
    """Give ``guid`` rows of every kind: attempts, a sent and a pending notification, a click,
    and ops actions that name it in their arguments, result and reason."""
    code, out = cli(capsys, "rerun", guid, "--force", "--why", f"asked by {guid}", "--inline")
    assert code == 0, out
    code, out = cli(capsys, "oauth-result", guid, "--status", "error", "--json")
    assert code == 0, out
    with engine.begin() as conn:
        mid = conn.scalar(select(Member.id).where(Member.member_guid == guid))
        sent = conn.scalar(select(Notification.id).where(Notification.member_id == mid))
        conn.execute(
            insert(Notification).values(
                id=uuid.uuid4(), idempotency_key=f"{guid}:9:9", member_id=mid,
                payload={"member_guid": guid}, status="pending", attempts=0,
            )
        )  # fmt: skip
        conn.execute(
            insert(models.Click).values(
                id=uuid.uuid4(), member_id=mid, notification_id=sent, episode=1,
                outcome="minted", referral_source="BROWSER",
            )
        )  # fmt: skip


def test_forget_a_member_leaves_no_row_naming_it(
    env: str, engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _import(capsys, tmp_path, _row("MBR-erase-1", "USR-erase"), _row("MBR-stay-1", "USR-erase"))
    assert cli(capsys, "scan", "--inline", "--json")[0] == 0
    _busy_member(capsys, engine, "MBR-erase-1")
    assert "MBR-erase-1" in _everything(engine)
    with engine.connect() as conn:
        mid = conn.scalar(select(Member.id).where(Member.member_guid == "MBR-erase-1"))
        # The funnel names the member by id: its episode and events exist before.
        assert conn.scalar(select(models.Episode.id).where(models.Episode.member_id == mid))

    code, out = cli(
        capsys, "forget", "--member", "MBR-erase-1", "--why", "erasure request MBR-erase-1",
        "--actor", "dpo", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert out["members"] == 1
    assert out["attempts"] >= 2
    assert out["notifications"] >= 2
    assert out["pending_canceled"] == 1
    assert out["clicks"] == 1
    assert out["funnel_events"] >= 1
    assert out["episodes"] == 1
    assert out["ops_actions_redacted"] >= 2
    with engine.connect() as conn:
        for table in (models.Episode, models.FunnelEvent):
            assert list(conn.execute(select(table).where(table.member_id == mid))) == []

    everything = _everything(engine)
    assert "MBR-erase-1" not in everything
    # The other member of the same user is untouched.
    assert "MBR-stay-1" in everything
    with engine.connect() as conn:
        forgets = list(conn.execute(select(OpsAction).where(OpsAction.command == "forget")))
    assert len(forgets) == 1
    (audit,) = forgets
    assert audit.actor == "dpo"
    assert audit.arguments == {"by": "member", "guid_sha256": _sha("MBR-erase-1")}
    assert audit.why.startswith("erasure request forgotten:")
    assert audit.result["members"] == 1

    # Idempotent: nothing found, nothing new recorded.
    code, again = cli(capsys, "forget", "--member", "MBR-erase-1", "--why", "again", "--json")
    assert code == 0
    assert again["already_forgotten"] is True
    assert again["members"] == 0
    with engine.connect() as conn:
        assert len(list(conn.execute(select(OpsAction).where(OpsAction.command == "forget")))) == 1

    # A member that comes back starts afresh: a new row, a new first episode and reminder.
    _import(capsys, tmp_path, _row("MBR-erase-1", "USR-erase"))
    assert cli(capsys, "scan", "--inline", "--json")[0] == 0
    with engine.connect() as conn:
        keys = set(
            conn.scalars(
                select(Notification.idempotency_key)
                .join(Member, Member.id == Notification.member_id)
                .where(Member.member_guid == "MBR-erase-1")
            )
        )
    assert keys == {"MBR-erase-1:1:1"}


def test_forget_a_user_removes_all_their_members(
    env: str, engine: Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _import(
        capsys, tmp_path, _row("MBR-u-1", "USR-gone"), _row("MBR-u-2", "USR-gone"),
        _row("MBR-other", "USR-other"),
    )  # fmt: skip
    assert cli(capsys, "scan", "--inline", "--json")[0] == 0
    code, out = cli(capsys, "forget", "--user", "USR-gone", "--why", "account closed", "--json")
    assert code == 0, out
    assert out["by"] == "user"
    assert out["members"] == 2
    everything = _everything(engine)
    for guid in ("USR-gone", "MBR-u-1", "MBR-u-2"):
        assert guid not in everything
    assert "MBR-other" in everything
    assert _sha("USR-gone") in everything


def test_forget_an_unknown_guid_is_recorded_once(
    env: str, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        code, out = cli(capsys, "forget", "--member", "MBR-never", "--why", "request", "--json")
        assert code == 0, out
        assert out["members"] == 0
    with engine.connect() as conn:
        assert len(list(conn.execute(select(OpsAction)))) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["forget", "--why", "x"],
        ["forget", "--user", "U", "--member", "M", "--why", "x"],
        ["forget", "--member", "M", "--why", "  "],
        ["forget", "--member", " ", "--why", "x"],
        ["forget", "--member", "M"],
    ],
)
def test_forget_usage_errors(env: str, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, _ = cli(capsys, *args)
    assert code == 2
