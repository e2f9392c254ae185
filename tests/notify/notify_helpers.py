"""Helpers for the notification tests: outbox row factory and a recording sink.

Rows are inserted directly (member + notification with a contract payload), so these tests do
not depend on the pipeline that normally writes them. A uniquely named module (not conftest) so
test files can import it without clashing with tests/conftest.py.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import Member, Notification
from worker.core.contract import build_message, idempotency_key
from worker.notify.sinks import DELIVERED, DeliveryResult, Message
from worker.store.db import session_scope

#: The relay's notion of "now" in these tests; rows are generated a minute before it.
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

_guids = itertools.count(1)


def oauth_uri(tag: str) -> str:
    return f"https://int-widgets.moneydesktop.com/oauth/predirect_to/MBR-{tag}/token-{tag}"


def add_notification(
    sessions: sessionmaker[Session],
    *,
    generated_at: datetime = NOW - timedelta(minutes=1),
    member_guid: str | None = None,
    reminder: int = 0,
    uri: str | None = None,
) -> uuid.UUID:
    """Insert a member and one pending notification carrying a v1 contract payload."""
    member_guid = member_guid or f"MBR-{next(_guids):06d}"
    nid = uuid.uuid4()
    with session_scope(sessions) as session:
        member = session.scalar(select(Member).where(Member.member_guid == member_guid))
        if member is None:
            member = Member(
                member_guid=member_guid,
                user_guid=f"USR-{member_guid}",
                institution_code="mxbank_oauth",
                is_oauth=True,
                episode=1,
            )
            session.add(member)
            session.flush()
        payload = build_message(
            notification_id=nid,
            user_guid=member.user_guid,
            member_guid=member_guid,
            institution_code=member.institution_code,
            reason="revoked",
            oauth_window_uri=uri or oauth_uri(f"{member_guid}-{reminder}"),
            generated_at=generated_at,
            episode=1,
            reminder=reminder,
            skip_aggregation=False,
            channel="BROWSER",
        )
        session.add(
            Notification(
                id=nid,
                idempotency_key=idempotency_key(member_guid, 1, reminder),
                member_id=member.id,
                payload=payload,
            )
        )
    return nid


def add_for_user(
    sessions: sessionmaker[Session],
    member_guid: str,
    *,
    user: str = "USR-1",
    due: datetime = NOW,
    generated_at: datetime | None = None,
    reminder: int = 0,
) -> uuid.UUID:
    """A member of ``user`` and its pending notification, due (created) at ``due``."""
    nid = uuid.uuid4()
    with session_scope(sessions) as s:
        member = s.scalar(select(Member).where(Member.member_guid == member_guid))
        if member is None:
            member = Member(
                member_guid=member_guid,
                user_guid=user,
                institution_code=f"bank-{member_guid}",
                is_oauth=True,
                episode=1,
            )
            s.add(member)
            s.flush()
        payload = build_message(
            notification_id=nid,
            user_guid=user,
            member_guid=member_guid,
            institution_code=member.institution_code,
            reason="revoked",
            oauth_window_uri=oauth_uri(f"{member_guid}-{reminder}"),
            generated_at=generated_at or due,
            episode=1,
            reminder=reminder,
            skip_aggregation=False,
            channel="BROWSER",
        )
        s.add(
            Notification(
                id=nid,
                idempotency_key=idempotency_key(member_guid, 1, reminder),
                member_id=member.id,
                payload=payload,
                created_at=due,
            )
        )
    return nid


def get_row(sessions: sessionmaker[Session], nid: uuid.UUID) -> Notification:
    with session_scope(sessions) as session:
        row = session.get(Notification, nid)
        assert row is not None
        session.expunge(row)
        return row


@dataclass
class RecordingSink:
    """An in-memory sink: records every message; ``answer`` decides each result."""

    answer: Callable[[Message], DeliveryResult] = lambda _m: DELIVERED
    name: str = "recording"
    delivered: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        self.delivered.extend(dict(m) for m in messages)
        return [self.answer(m) for m in messages]

    def close(self) -> None:
        self.closed = True


# --- a real HTTP receiver (the fixture is in conftest.py) ----------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def message(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.body)
        return result


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1; ``respond(message)`` returns the status to answer."""

    url: str
    received: list[Received]
    respond: Callable[[dict[str, Any]], int]
    release: threading.Event
