"""The ``clicks`` table and the reads the reconnect page needs. Never commits."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models import Click, Member, Notification


def link_target(session: Session, notification_id: uuid.UUID) -> tuple[Notification, Member] | None:
    """The notification a reconnect token names, with its member."""
    row = session.execute(
        select(Notification, Member)
        .join(Member, Member.id == Notification.member_id)
        .where(Notification.id == notification_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def count_since(session: Session, member_id: int, since: datetime) -> int:
    """Clicks that asked MX for a URI for ``member_id`` since ``since`` (the per-member limit)."""
    stmt = (
        select(func.count())
        .select_from(Click)
        .where(
            Click.member_id == member_id,
            Click.created_at >= since,
            Click.outcome.in_(("minted", "mx_error", "refused")),
        )
    )
    return int(session.scalar(stmt) or 0)


def add(
    session: Session,
    *,
    member_id: int,
    notification_id: uuid.UUID,
    episode: int,
    outcome: str,
    now: datetime,
    referral_source: str = "BROWSER",
) -> uuid.UUID:
    click = Click(
        id=uuid.uuid4(), member_id=member_id, notification_id=notification_id, episode=episode,
        outcome=outcome, referral_source=referral_source, created_at=now,
    )  # fmt: skip
    session.add(click)
    return click.id


def get(session: Session, click_id: uuid.UUID) -> Click | None:
    return session.get(Click, click_id)


def report(session: Session, click_id: uuid.UUID, *, status: str, error_reason: str | None) -> None:
    session.execute(
        update(Click)
        .where(Click.id == click_id)
        .values(reported=status, error_reason=error_reason)
        .execution_options(synchronize_session=False)
    )


def use_state(session: Session, click_id: uuid.UUID, now: datetime) -> bool:
    """Mark a click's APP ``state`` used; False when it was used before (single use)."""
    result = session.execute(
        update(Click)
        .where(Click.id == click_id, Click.state_used_at.is_(None))
        .values(state_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def confirm(session: Session, member_id: int, episode: int, now: datetime) -> None:
    """Mark the episode's clicks as confirmed: MX says the member is connected again."""
    session.execute(
        update(Click)
        .where(Click.member_id == member_id, Click.episode == episode)
        .values(confirmed_at=now)
        .execution_options(synchronize_session=False)
    )


def first_app_return(session: Session, notification_id: uuid.UUID) -> bool:
    """True until an APP flow's state for this notification has been used once."""
    used = session.scalar(
        select(func.count())
        .select_from(Click)
        .where(Click.notification_id == notification_id, Click.state_used_at.is_not(None))
    )
    return not used
