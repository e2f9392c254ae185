"""The ``clicks`` table and the reads the reconnect page needs. Never commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Row, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import Click, Member, Notification
from worker.store.db import storage_error

_CLICKS = cast(Table, Click.__table__)  # a mapped class's table
#: The table, not the mapped class: a Core INSERT skips the ORM's bulk-insert machinery. Built
#: once, its values bound per call (``.values(...)`` would build a new statement every time).
_INSERT = insert(_CLICKS)


def link_target(session: Session, notification_id: uuid.UUID) -> tuple[Notification, Member] | None:
    """The notification a reconnect token names, with its member."""
    row = session.execute(
        select(Notification, Member)
        .join(Member, Member.id == Notification.member_id)
        .where(Notification.id == notification_id)
    ).first()
    return (row[0], row[1]) if row is not None else None


#: Click outcomes that asked MX for a URI (they count against the per-member limit).
MINTING = ("minted", "mx_error", "refused")


def _link_facts_statement() -> Any:
    recent = (
        select(func.count())
        .select_from(Click)
        .where(
            Click.member_id == Member.id,
            Click.created_at >= bindparam("clicks_since"),
            Click.outcome.in_(MINTING),
        )
        .scalar_subquery()
    )
    return (
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
        .where(Notification.id == bindparam("notification_id"))
    )


#: Built once: constructing the select is most of SQLAlchemy's cost per page (its compiled
#: form is cached either way).
_LINK_FACTS = _link_facts_statement()


def link_facts(
    engine: Engine, notification_id: uuid.UUID, clicks_since: datetime
) -> Row[Any] | None:
    """What a reconnect page needs, in one read on a plain connection (no ORM objects, no
    commit: the page is the hot path of ``reauth serve``): the notification's payload and link
    parameters, its member, and how many presses asked MX for a URI since ``clicks_since``.

    One statement in autocommit mode: a single SELECT is consistent by itself, so no BEGIN and
    no ROLLBACK round trip. Retried once on a connection the server dropped (the engine of
    ``reauth serve`` pings only connections that sat idle, see store.db.make_engine): a read
    is safe to repeat."""
    params = {"notification_id": notification_id, "clicks_since": clicks_since}
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                auto = conn.execution_options(isolation_level="AUTOCOMMIT")
                return auto.execute(_LINK_FACTS, params).first()
        except DBAPIError as exc:
            if attempt == 1 and exc.connection_invalidated:
                continue
            raise storage_error(exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


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
    # An INSERT, not an ORM object: nothing reads the row back in this unit of work, and the
    # press is the hot path of ``reauth serve``.
    click_id = uuid.uuid4()
    values = {
        "id": click_id, "member_id": member_id, "notification_id": notification_id,
        "episode": episode, "outcome": outcome, "referral_source": referral_source,
        "created_at": now,
    }  # fmt: skip
    session.execute(_INSERT, values)
    return click_id


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
