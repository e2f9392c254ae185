"""The naive baseline: the re-auth worker the way a first version is usually written.

One Celery task per member; a synchronous ``httpx.Client``; the ORM loads the member, the task
calls MX, updates the member, adds an attempt and an outbox row, commits, and publishes the
notification straight to a Redis Stream. One member, one HTTP round trip, one transaction, one
message — and a prefork worker with one process per core, so at most ``cores`` calls are in
flight.

It is not a straw man: it uses the same pure policy (``worker.core.policy``), the same message
contract and the same Nexus calls, caches each user's Nexus session per process (a first version
would), and is just as correct for the happy path. It lacks what the pipeline adds: concurrency
per process, batched writes and leases. Run it with::

    celery -A bench.naive worker -Q naive -c 2 -P prefork

with the pipeline's ``REAUTH_*`` environment; :func:`enqueue` sends one task per member id.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import httpx
import redis
from celery import Celery
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from models import Attempt, Member, Notification
from worker.clock import utc_now
from worker.config import get_settings
from worker.core.contract import build_message, idempotency_key
from worker.core.policy import Generate, Outcome, PolicyConfig, after_outcome, decide
from worker.mx import params as P
from worker.store.members import fields_to_columns, snapshot

QUEUE = "naive"
TASK = "naive.regenerate_member"
#: Where the naive worker publishes (apart from the pipeline's stream).
STREAM = "bench:naive:notifications"

app = Celery("naive", broker=os.environ.get("REAUTH_BROKER_URL", "memory://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

# Per-process state, built after the prefork fork (a first version keeps globals like these).
_state: dict[str, Any] = {}


def _resources() -> tuple[sessionmaker[Session], httpx.Client, redis.Redis, PolicyConfig]:
    if not _state:
        s = get_settings()
        _state["sessions"] = sessionmaker(create_engine(s.database_url), expire_on_commit=False)
        _state["http"] = httpx.Client(timeout=s.mx_timeout)
        assert s.redis_url is not None
        _state["redis"] = redis.Redis.from_url(s.redis_url)
        _state["policy"] = PolicyConfig.from_settings(s)
        _state["tokens"] = {}
    return _state["sessions"], _state["http"], _state["redis"], _state["policy"]


def _session_token(http: httpx.Client, user: str) -> str:
    tokens: dict[str, str] = _state["tokens"]
    if user not in tokens:
        s = get_settings()
        r = http.get(
            s.mx_sso_base_url + P.sso_token_path(s.mx_client_id, user),
            headers={
                P.HEADER_API_KEY: s.mx_api_key.get_secret_value(),
                "Accept": P.SSO_MEDIA_TYPE,
            },
        )
        r.raise_for_status()
        api_token = r.json()["api_token"]["token"]
        r = http.post(
            s.mx_base_url + P.NEXUS_SESSIONS_PATH,
            headers={
                P.HEADER_API_TOKEN: api_token,
                "Accept": P.NEXUS_MEDIA_TYPE,
                "Content-Type": P.NEXUS_MEDIA_TYPE,
            },
        )
        r.raise_for_status()
        tokens[user] = r.json()["session"]["token"]
    return tokens[user]


@app.task(name=TASK)
def regenerate_member(member_id: int) -> str:
    """Load one member, call MX, write the outcome and the notification, commit, publish."""
    sessions, http, red, cfg = _resources()
    s = get_settings()
    now = utc_now()
    with sessions() as db:
        m = db.get(Member, member_id)
        if m is None:
            return "missing"
        snap = snapshot(m)
        g = decide(snap, now, cfg)
        if not isinstance(g, Generate):
            return "no_call"
        query = {
            P.Q_REFERRAL_SOURCE: g.params.referral_source,
            P.Q_SKIP_AGGREGATION: "true" if g.skip_aggregation else "false",
        }
        started = utc_now()
        r = http.get(
            s.mx_base_url + P.nexus_oauth_path(m.member_guid),
            params=query,
            headers={
                P.HEADER_SESSION_TOKEN: _session_token(http, m.user_guid),
                "Accept": P.NEXUS_MEDIA_TYPE,
            },
        )
        latency_ms = (utc_now() - started).total_seconds() * 1000
        r.raise_for_status()
        uri = r.json()["member"]["oauth_window_uri"]
        fields = fields_to_columns(after_outcome(snap, g, Outcome.SUCCESS, now, cfg))
        for name, value in fields.items():
            setattr(m, name, value)
        m.oauth_window_uri = uri
        m.uri_generated_at = now
        db.add(
            Attempt(
                member_id=m.id,
                episode=g.episode,
                reminder=g.reminder,
                trigger="scan",
                reason=g.reason.value,
                mx_api="nexus",
                referral_source=g.params.referral_source,
                skip_aggregation=g.skip_aggregation,
                skip_aggregation_why=g.skip_why.value,
                redirect_used=False,
                outcome="success",
                http_status=r.status_code,
                latency_ms=latency_ms,
                created_at=now,
            )
        )
        nid = uuid.uuid4()
        payload = build_message(
            notification_id=nid,
            user_guid=m.user_guid,
            member_guid=m.member_guid,
            institution_code=m.institution_code,
            reason=g.reason.value,
            oauth_window_uri=uri,
            generated_at=now,
            episode=g.episode,
            reminder=g.reminder,
            skip_aggregation=g.skip_aggregation,
            channel=g.params.referral_source,
        )
        db.add(
            Notification(
                id=nid,
                idempotency_key=idempotency_key(m.member_guid, g.episode, g.reminder),
                member_id=m.id,
                payload=payload,
                status="sent",
                attempts=1,
                sent_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        db.commit()
    red.xadd(STREAM, {"payload": json.dumps(payload)})
    return "success"


def enqueue(member_ids: list[int]) -> None:
    """One message per member, as the first version's scan would send them."""
    for member_id in member_ids:
        app.send_task(TASK, args=[member_id], queue=QUEUE)
