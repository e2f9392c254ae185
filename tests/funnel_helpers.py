"""Seed episodes with known paths through the real funnel writer (``store.funnel.record``).

Each seeded episode follows one :class:`Path`; :func:`expected` counts what the report must say
from the paths themselves, independently of the SQL that the report runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert

from models import Member
from worker.core.funnel import Event, Stage
from worker.store import funnel
from worker.store.db import session_factory, session_scope


@dataclass(frozen=True)
class Path:
    institution: str
    reason: str
    channel: str
    reminders: int  # notified reminders (0: never notified)
    clicked: bool = False
    result: str | None = None  # "success" or an error reason
    confirmed_after_h: float | None = None  # hours from detection
    ended: str | None = None  # gave_up | gone | ended


def paths() -> list[Path]:
    """120 episodes: two healthy banks, one whose OAuth mostly fails (and a name to escape)."""
    out: list[Path] = []
    for i in range(40):
        inst, reason, ch = "chase", ("revoked", "expired")[i % 2], ("BROWSER", "APP")[i % 3 == 0]
        if i < 24:
            out.append(Path(inst, reason, ch, 1 + i % 3, True, "success", 1.0 + i * 1.5))
        elif i < 30:
            out.append(Path(inst, reason, ch, 3, True, "CANCELLED"))
        elif i < 35:
            out.append(Path(inst, reason, ch, 3, ended="gave_up"))
        else:
            out.append(Path(inst, reason, ch, 2))
    for i in range(40):
        inst, reason, ch = "wells", ("revoked", "abandoned")[i % 2], "BROWSER"
        if i < 20:
            out.append(Path(inst, reason, ch, 1 + i % 2, True, "success", 0.5 + i * 3))
        elif i < 28:
            out.append(Path(inst, reason, ch, 2, True))
        else:
            out.append(Path(inst, reason, ch, 1, ended="gone" if i % 2 else "ended"))
    for i in range(40):
        inst, reason, ch = "<b>bad&bank</b>", "revoked", ("BROWSER", "APP")[i % 2]
        if i < 4:
            out.append(Path(inst, reason, ch, 1, True, "success", 2.0 + i))
        elif i < 34:
            out.append(Path(inst, reason, ch, 2, True, "SERVER_ERROR"))
        else:
            out.append(Path(inst, reason, ch, 1))
    return out


def seed(engine: Engine, now: datetime, *, spread_h: float = 240.0) -> list[Path]:
    """One member per path, detected within the last ``spread_h`` hours; returns the paths."""
    chosen = paths()
    with engine.begin() as conn:
        ids = [
            int(
                conn.execute(
                    insert(Member)
                    .values(
                        member_guid=f"MBR-funnel-{n}", user_guid=f"USR-funnel-{n}",
                        institution_code=p.institution, is_oauth=True, channel=p.channel,
                        is_being_aggregated=False, reauth_state="awaiting_user", episode=1,
                        reminders_sent=p.reminders, attempts=0, created_at=now, updated_at=now,
                    )
                    .returning(Member.id)
                ).scalar_one()
            )
            for n, p in enumerate(chosen)
        ]  # fmt: skip
    events: list[Event] = []
    for n, (mid, p) in enumerate(zip(ids, chosen, strict=True)):
        t0 = now - timedelta(hours=spread_h * (n + 1) / (len(chosen) + 1))
        events += _events(mid, p, t0)
    with session_scope(session_factory(engine)) as s:
        funnel.record(s, events)
    return chosen


def _events(mid: int, p: Path, t0: datetime) -> list[Event]:
    def at(h: float) -> datetime:
        return t0 + timedelta(hours=h)

    ev = [Event(mid, 1, Stage.DETECTED, t0, detail=p.reason, how="scan")]
    for r in range(1, p.reminders + 1):
        ev += [
            Event(mid, 1, Stage.LINK, at(0.01 + 24 * (r - 1)), reminder=r),
            Event(mid, 1, Stage.NOTIFIED, at(0.02 + 24 * (r - 1)), reminder=r),
        ]
    if p.clicked:
        click_h = (p.confirmed_after_h or 1.0) - 0.1
        ev.append(Event(mid, 1, Stage.CLICKED, at(click_h)))
        if p.result:
            ev += [
                Event(mid, 1, Stage.OPENED, at(click_h + 0.01)),
                Event(mid, 1, Stage.RESULT, at(click_h + 0.02), detail=p.result),
            ]
    if p.confirmed_after_h is not None:
        ev.append(Event(mid, 1, Stage.CONFIRMED, at(p.confirmed_after_h)))
    if p.ended:
        ev.append(Event(mid, 1, Stage(p.ended), at(30)))
    return ev


def expected(chosen: list[Path]) -> dict[str, Any]:
    """What the report must say about ``chosen`` (counted from the paths)."""
    stages = Counter[str]()
    for p in chosen:
        stages["detected"] += 1
        stages["link"] += p.reminders > 0
        stages["notified"] += p.reminders > 0
        stages["clicked"] += p.clicked
        stages["opened"] += p.result is not None
        stages["result"] += p.result is not None
        stages["confirmed"] += p.confirmed_after_h is not None
    reconnect_minutes = sorted(
        int(p.confirmed_after_h * 60) for p in chosen if p.confirmed_after_h is not None
    )
    converting = Counter(str(p.reminders) for p in chosen if p.confirmed_after_h is not None)
    return {
        "stages": dict(stages),
        "reconnect_minutes": reconnect_minutes,
        "converting": dict(converting),
        "outcomes": Counter(
            "reconnected" if p.confirmed_after_h is not None else p.ended
            for p in chosen
            if p.confirmed_after_h is not None or p.ended
        ),
    }
