"""The ``clicks`` table and the reads the reconnect page needs. Never commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import Click, Member, Notification
from worker.store.db import storage_error


def link_target(session: Session, notification_id: uuid.UUID) -> tuple[Notification, Member] | None:
    """The notification a reconnect token names, with its member."""
    row = session.execute(
        select(Notification, Member)
        .join(Member, Member.id == Notification.member_id)
        .where(Notification.id == notification_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


def link_facts(
    engine: Engine, notification_id: uuid.UUID, clicks_since: datetime
) -> Row[Any] | None:
    """What a reconnect page needs, in one read on a plain connection (no ORM objects, no
    commit: the page is the hot path of ``reauth serve``): the notification's payload and link
    parameters, its member, and how many presses asked MX for a URI since ``clicks_since``."""
    recent = (
        select(func.count())
        .select_from(Click)
        .where(
            Click.member_id == Member.id,
            Click.created_at >= clicks_since,
            Click.outcome.in_(MINTING),
        )
        .scalar_subquery()
    )
    stmt = (
        select(
            Notification.id.label("notification_id"),
            Notification.payload,
            Notification.link_params,
            Member.id.label("member_id"),
            Member.member_guid,
            Member.user_guid,
            Member.user_id,
            Member.institution_code,
            Member.institution_name,
            Member.reauth_state,
            Member.episode,
            recent.label("recent_clicks"),
        )
        .join(Member, Member.id == Notification.member_id)
        .where(Notification.id == notification_id)
    )
    try:
        with engine.connect() as conn:
            return conn.execute(stmt).first()
    except DBAPIError as exc:
        raise storage_error(exc) from exc


#: Click outcomes that asked MX for a URI (they count against the per-member limit).
MINTING = ("minted", "mx_error", "refused")


def count_since(session: Session, member_id: int, since: datetime) -> int:
    """Clicks that asked MX for a URI for ``member_id`` since ``since`` (the per-member limit)."""
    stmt = (
        select(func.count())
        .select_from(Click)
        .where(
            Click.member_id == member_id,
            Click.created_at >= since,
            Click.outcome.in_(MINTING),
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
