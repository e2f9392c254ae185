"""Operational records: ``ops_actions`` (who ran what and why) and ``scan_runs`` (what each
scan did). Never commits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import OpsAction, ScanRun


def record_action(
    session: Session,
    *,
    actor: str,
    command: str,
    arguments: dict[str, Any],
    why: str | None,
    result: dict[str, Any] | None,
    now: datetime,
) -> None:
    """One audit row, in the same transaction as the change it describes."""
    session.add(
        OpsAction(
            actor=actor,
            command=command,
            arguments=arguments,
            why=why,
            result=result,
            created_at=now,
        )
    )


def actions_naming(session: Session, member_guid: str) -> list[OpsAction]:
    """Audit rows whose arguments name ``member_guid`` (alone or in a list)."""
    found = []
    for o in session.scalars(select(OpsAction).order_by(OpsAction.id)):
        args = o.arguments or {}
        if member_guid in (args.get("member_guids") or []) or args.get("member_guid") == (
            member_guid
        ):
            found.append(o)
    return found


def record_scan(
    session: Session,
    *,
    trigger: str,
    started_at: datetime,
    finished_at: datetime,
    duration_s: float,
    claimed: int,
    batches: int,
    skipped_lock: bool,
    interrupted: bool = False,
) -> None:
    session.add(
        ScanRun(
            trigger=trigger,
            started_at=started_at,
            finished_at=finished_at,
            duration_s=duration_s,
            claimed=claimed,
            batches=batches,
            skipped_lock=skipped_lock,
            interrupted=interrupted,
        )
    )


def last_scan(session: Session) -> ScanRun | None:
    return session.scalars(select(ScanRun).order_by(ScanRun.id.desc()).limit(1)).first()
