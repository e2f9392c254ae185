"""MX webhooks end to end in process: ``POST /mx/webhooks`` on `reauth serve`'s app (its own
runtime, queueing the apply task as in production), the inbox, and the apply job run by a
worker's inline runtime against the MX sandbox right after each POST (``Hooks.post``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select, update

from models import Attempt, Member, Notification, WebhookEvent
from tests.pipeline_helpers import make_settings
from worker.app import jobs
from worker.clock import utc_now
from worker.runtime import Runtime
from worker.sandbox.server import RunningSandbox
from worker.serving import serve_in_thread
from worker.web.app import create_app

USER, PASSWORD = "mx-hooks", "correct horse battery staple"
AUTH = (USER, PASSWORD)


@dataclass
class Hooks:
    #: The worker's runtime (inline follow-ups); the web app has its own.
    rt: Runtime
    url: str
    sandbox: RunningSandbox

    def post(self, doc: Any, *, path: str = "", auth: Any = AUTH, **kw: Any) -> httpx.Response:
        """POST like MX, then run the apply job the intake queued."""
        content = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        answer = httpx.post(f"{self.url}/mx/webhooks{path}", content=content, auth=auth, **kw)
        jobs.apply_webhooks(self.rt, clock=utc_now)
        return answer

    def events(self) -> list[WebhookEvent]:
        with self.rt.sessions() as s:
            return list(s.scalars(select(WebhookEvent).order_by(WebhookEvent.id)))

    def member(self, guid: str) -> Member | None:
        with self.rt.sessions() as s:
            return s.scalar(select(Member).where(Member.member_guid == guid))

    def notifications(self, guid: str) -> list[Notification]:
        with self.rt.sessions() as s:
            return list(
                s.scalars(
                    select(Notification)
                    .join(Member, Member.id == Notification.member_id)
                    .where(Member.member_guid == guid)
                    .order_by(Notification.created_at)
                )
            )


def _serve(db_url: str, sandbox: RunningSandbox, **extra: Any) -> Iterator[Hooks]:
    settings = make_settings(
        db_url, sandbox, mx_webhook_username=USER, mx_webhook_password=PASSWORD, **extra
    )
    rt = Runtime(settings, inline=True)
    web = Runtime(settings)
    try:
        with serve_in_thread(create_app(web), name="reauth-serve") as port:
            yield Hooks(rt, f"http://127.0.0.1:{port}", sandbox)
    finally:
        web.close()
        rt.close()


@pytest.fixture
def hooks(db_url: str, sandbox: RunningSandbox) -> Iterator[Hooks]:
    yield from _serve(db_url, sandbox)


def _member(rt: Runtime, guid: str, **fields: Any) -> None:
    values: dict[str, Any] = {
        "member_guid": guid, "user_guid": "USR-1", "institution_code": "mxbank",
        "is_oauth": True, "connection_status": "CONNECTED", "reauth_state": "idle",
        "channel": "BROWSER", **fields,
    }  # fmt: skip
    with rt.engine.begin() as conn:
        conn.execute(insert(Member).values(**values))


def _status(guid: str, status: str = "DENIED") -> dict[str, Any]:
    return {
        "action": "CHANGED", "connection_status": status, "connection_status_id": 2,
        "connection_status_message": "x", "member_guid": guid, "type": "CONNECTION_STATUS",
        "user_guid": "USR-1",
    }  # fmt: skip


def _member_event(guid: str, action: str, status: str = "CONNECTED") -> dict[str, Any]:
    return {
        "action": action, "type": "MEMBER", "guid": guid, "user_guid": "USR-1",
        "connection_status": status, "institution_code": "mxbank", "is_oauth": True,
        "is_being_aggregated": False,
    }  # fmt: skip


# --- receiving ----------------------------------------------------------------------------------


def test_wrong_or_missing_auth_is_401_and_nothing_is_stored(hooks: Hooks) -> None:
    doc = _status("MBR-auth")
    assert hooks.post(doc, auth=None).status_code == 401
    assert hooks.post(doc, auth=(USER, "wrong")).status_code == 401
    assert hooks.post(doc, auth=("other", PASSWORD)).status_code == 401
    answer = hooks.post(doc, auth=None, headers={"Authorization": "Basic !!notbase64"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert hooks.events() == []


def test_body_over_64_kib_is_413(hooks: Hooks) -> None:
    big = json.dumps({**_status("MBR-big"), "pad": "x" * 70_000}).encode()
    assert hooks.post(big).status_code == 413
    assert hooks.events() == []


def test_unusable_bodies_are_stored_rejected_and_answered_204(hooks: Hooks) -> None:
    assert hooks.post(b"{not json").status_code == 204
    assert hooks.post([1, 2]).status_code == 204
    assert hooks.post({"type": "CONNECTION_STATUS", "action": "CHANGED"}).status_code == 204
    rows = hooks.events()
    assert [r.status for r in rows] == ["rejected"] * 3
    assert [r.note for r in rows] == [
        "not JSON",
        "not a JSON object",
        "missing member_guid, user_guid",
    ]
    assert rows[0].body == b"{not json"


def test_duplicates_within_the_window_are_stored_once_with_one_effect(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-dup")
    doc = _status("MBR-dup")
    assert hooks.post(doc).status_code == 204
    assert hooks.post(doc).status_code == 204
    assert hooks.post(doc, path="/CONNECTION_STATUS").status_code == 204
    (row,) = hooks.events()
    assert row.status == "applied"
    assert row.duplicates == 2
    assert len(hooks.notifications("MBR-dup")) == 1
    # Past the window the same body is a new event (MX's retries stop after about a day).
    with hooks.rt.engine.begin() as conn:
        conn.execute(update(WebhookEvent).values(received_at=utc_now() - timedelta(hours=49)))
    assert hooks.post(doc).status_code == 204
    assert len(hooks.events()) == 2
    assert len(hooks.notifications("MBR-dup")) == 1  # MX says DENIED still: same episode


def test_type_in_the_path_is_accepted_and_must_agree(hooks: Hooks) -> None:
    doc = {k: v for k, v in _status("MBR-path").items() if k != "type"}
    assert hooks.post(doc, path="/CONNECTION_STATUS").status_code == 204
    assert hooks.post(_status("MBR-path2"), path="/MEMBER").status_code == 204
    first, second = hooks.events()
    assert (first.event_type, first.status) == ("CONNECTION_STATUS", "applied")
    assert (second.status, second.note) == ("rejected", "type CONNECTION_STATUS posted to MEMBER")


def test_webhooks_are_off_without_credentials(db_url: str, sandbox: RunningSandbox) -> None:
    rt = Runtime(make_settings(db_url, sandbox))
    try:
        with serve_in_thread(create_app(rt)) as port:
            answer = httpx.post(f"http://127.0.0.1:{port}/mx/webhooks", content=b"{}", auth=AUTH)
            assert answer.status_code == 404
    finally:
        rt.close()


def test_source_allow_list_honours_only_trusted_proxies(
    db_url: str, sandbox: RunningSandbox
) -> None:
    doc = _status("MBR-ip")
    for h in _serve(db_url, sandbox, mx_webhook_allowed_ips=["10.0.0.0/8"]):
        # The peer (loopback) is not allowed, and its X-Forwarded-For is not believed.
        assert h.post(doc, headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 403
        assert h.events() == []
    for h in _serve(
        db_url, sandbox, mx_webhook_allowed_ips=["10.0.0.0/8"],
        mx_webhook_trusted_proxies=["127.0.0.1/32"],
    ):  # fmt: skip
        assert h.post(doc, headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 204
        assert h.post(doc, headers={"X-Forwarded-For": "192.0.2.9"}).status_code == 403


# --- applying -----------------------------------------------------------------------------------


def test_connection_status_notifies_a_known_member_without_a_scan(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-known")
    hooks.sandbox.sandbox.set_member_state("MBR-known", connection_status="DENIED")
    assert hooks.post(_status("MBR-known")).status_code == 204
    m = hooks.member("MBR-known")
    assert m is not None
    assert (m.reauth_state, m.reauth_reason, m.episode) == ("awaiting_user", "revoked", 1)
    (note,) = hooks.notifications("MBR-known")
    assert note.status == "sent"
    with hooks.rt.sessions() as s:
        assert s.scalar(select(Attempt.trigger).where(Attempt.member_id == m.id)) == "webhook"


def test_connection_status_for_an_unknown_member_creates_it_from_mx(hooks: Hooks) -> None:
    hooks.sandbox.sandbox.set_member_state("MBR-new", connection_status="EXPIRED")
    assert hooks.post(_status("MBR-new", "EXPIRED")).status_code == 204
    m = hooks.member("MBR-new")
    assert m is not None
    assert m.is_oauth is True  # what MX said (Nexus member read)
    assert (m.channel, m.institution_code, m.connection_status) == ("BROWSER", "unknown", "EXPIRED")
    assert m.reauth_state == "awaiting_user"
    assert len(hooks.notifications("MBR-new")) == 1


def test_member_back_to_connected_ends_the_episode_and_cancels_reminders(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-back")
    hooks.sandbox.sandbox.set_member_state("MBR-back", connection_status="DENIED")
    hooks.post(_status("MBR-back"))
    with hooks.rt.engine.begin() as conn:  # the reminder not delivered yet
        conn.execute(update(Notification).values(status="pending"))
    hooks.sandbox.sandbox.set_member_state("MBR-back", connection_status="CONNECTED")
    assert hooks.post(_member_event("MBR-back", "updated")).status_code == 204
    m = hooks.member("MBR-back")
    assert m is not None
    assert (m.reauth_state, m.next_attempt_at, m.connection_status) == ("idle", None, "CONNECTED")
    assert [n.status for n in hooks.notifications("MBR-back")] == ["canceled"]


def test_out_of_order_events_mx_current_state_wins(hooks: Hooks) -> None:
    """A stale DENIED arriving after the member reconnected cannot reopen the episode."""
    _member(hooks.rt, "MBR-late", reauth_state="awaiting_user", reauth_reason="revoked",
            episode=1, episode_started_at=utc_now() - timedelta(hours=1), reminders_sent=1,
            connection_status="DENIED")  # fmt: skip
    hooks.sandbox.sandbox.set_member_state("MBR-late", connection_status="CONNECTED")
    assert hooks.post(_status("MBR-late", "DENIED")).status_code == 204  # stale
    m = hooks.member("MBR-late")
    assert m is not None
    assert (m.reauth_state, m.connection_status) == ("idle", "CONNECTED")
    assert hooks.post(_member_event("MBR-late", "updated", "DENIED")).status_code == 204  # stale
    m = hooks.member("MBR-late")
    assert m is not None
    assert m.reauth_state == "idle"
    assert hooks.notifications("MBR-late") == []


def test_aggregation_after_oauth_ends_an_open_episode(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-agg", reauth_state="awaiting_user", reauth_reason="revoked",
            episode=1, episode_started_at=utc_now() - timedelta(hours=1), reminders_sent=1,
            connection_status="DENIED")  # fmt: skip
    hooks.sandbox.sandbox.set_member_state("MBR-agg", connection_status="CONNECTED")
    doc = {
        "action": "member_data_updated", "completed_at": 1, "is_background": False,
        "job_guid": "JOB-1", "member_guid": "MBR-agg", "transactions_created_count": 1,
        "transactions_updated_count": 0, "type": "AGGREGATION", "user_guid": "USR-1",
        "user_id": None,
    }  # fmt: skip
    assert hooks.post(doc).status_code == 204
    m = hooks.member("MBR-agg")
    assert m is not None
    assert m.reauth_state == "idle"


def test_aggregation_of_a_member_without_an_episode_reads_nothing(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-quiet")
    before = len(hooks.sandbox.requests())
    doc = {"action": "member_data_updated", "member_guid": "MBR-quiet", "user_guid": "USR-1",
           "type": "AGGREGATION"}  # fmt: skip
    assert hooks.post(doc).status_code == 204
    (row,) = hooks.events()
    assert (row.status, row.note) == ("ignored", "nothing to do")
    assert len(hooks.sandbox.requests()) == before


def test_member_deleted_is_gone_and_its_reminders_are_canceled(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-del")
    hooks.sandbox.sandbox.set_member_state("MBR-del", connection_status="DENIED")
    hooks.post(_status("MBR-del"))
    with hooks.rt.engine.begin() as conn:
        conn.execute(update(Notification).values(status="pending"))
    assert hooks.post(_member_event("MBR-del", "deleted")).status_code == 204
    m = hooks.member("MBR-del")
    assert m is not None
    assert (m.reauth_state, m.next_attempt_at) == ("gone", None)
    assert [n.status for n in hooks.notifications("MBR-del")] == ["canceled"]


def test_an_mx_outage_leaves_the_event_pending_for_a_retry(
    db_url: str, sandbox: RunningSandbox
) -> None:
    """The event stays in the inbox, claimable again after a backoff; the sweeper applies it."""
    for h in _serve(db_url, sandbox, mx_base_url="http://127.0.0.1:9"):
        _member(h.rt, "MBR-outage")
        assert h.post(_status("MBR-outage")).status_code == 204
        (row,) = h.events()
        assert (row.status, row.attempts) == ("pending", 1)
        assert row.note is not None
        assert row.note.startswith("MX read failed")
        assert row.claim_owner is None
        assert row.claim_expires_at is not None
        # Not claimable before its backoff ends: a sweep now does nothing.
        assert jobs.apply_webhooks(h.rt, clock=utc_now, sweep=True).events == 0
        later = jobs.apply_webhooks(h.rt, clock=lambda: utc_now() + timedelta(minutes=5))
        assert later.events == 1


def test_many_events_for_one_member_read_mx_once_per_batch(hooks: Hooks) -> None:
    """Events are applied by a job, not by the request: queue several, then apply once."""
    _member(hooks.rt, "MBR-many")
    hooks.sandbox.sandbox.set_member_state("MBR-many", connection_status="DENIED")
    with hooks.rt.sessions() as s, s.begin():
        from worker.service import webhooks

        for status in ("DENIED", "PREVENTED", "EXPIRED"):
            body = json.dumps(_status("MBR-many", status)).encode()
            parsed = webhooks.parse(body, None)
            s.add(WebhookEvent(event_type=parsed.event_type, action=parsed.action,
                               member_guid=parsed.member_guid, user_guid=parsed.user_guid,
                               digest=status, body=body, status="pending", duplicates=0,
                               attempts=0, received_at=utc_now()))  # fmt: skip
    reads = [r for r in hooks.sandbox.requests() if r["path"].endswith("/MBR-many")]
    result = jobs.apply_webhooks(hooks.rt, clock=utc_now)
    assert (result.events, result.members_read, result.regenerated) == (3, 1, 1)
    after = [r for r in hooks.sandbox.requests() if r["path"].endswith("/MBR-many")]
    assert len(after) == len(reads) + 1
    with hooks.rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Notification)) == 1


@pytest.mark.redis
def test_with_celery_an_apply_task_takes_one_batch_and_queues_the_next(
    db_url: str, sandbox: RunningSandbox, redis_url: str
) -> None:
    """Through Celery (not inline) each apply task applies one batch; a full one queues the
    next apply task (the coalescing flag in Redis is set again after the task cleared it), so
    another pool process takes the next batch; a partial batch queues nothing more."""
    import redis

    from worker.app.followups import WEBHOOKS_QUEUED_KEY
    from worker.service import webhooks

    rt = Runtime(make_settings(db_url, sandbox, batch_size=2, redis_url=redis_url))
    r = redis.Redis.from_url(redis_url)
    try:
        for guid in ("MBR-c1", "MBR-c2", "MBR-c3"):
            webhooks.intake(rt, json.dumps(_status(guid)).encode(), None, utc_now())
        first = jobs.apply_webhooks(rt, clock=utc_now)
        assert (first.events, first.applied) == (2, 2)
        assert r.exists(WEBHOOKS_QUEUED_KEY)  # the next apply task was queued
        assert webhooks.pending(rt, utc_now()) == 1
        second = jobs.apply_webhooks(rt, clock=utc_now)  # what that task does
        assert (second.events, second.applied) == (1, 1)
        assert not r.exists(WEBHOOKS_QUEUED_KEY)
        assert webhooks.pending(rt, utc_now()) == 0
    finally:
        r.close()
        rt.close()


# --- the sandbox as MX's sender -------------------------------------------------------------------


def _sandbox_sends(hooks: Hooks, **config: Any) -> None:
    hooks.sandbox.sandbox.config.update(
        {"webhook_url": f"{hooks.url}/mx/webhooks", "webhook_username": USER,
         "webhook_password": PASSWORD, "webhook_retry_seconds": 0.05, **config}
    )  # fmt: skip


def _read_once(hooks: Hooks, guid: str) -> None:
    """MX learns the member's user when it is first asked for it."""
    from worker.mx import MemberRequest

    hooks.rt.run(hooks.rt.mx.read_member(MemberRequest(guid, "USR-1")))


def test_sandbox_webhooks_drive_an_episode_open_and_closed(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-sb")
    _sandbox_sends(hooks, webhook_duplicates=1)
    sb = hooks.sandbox.sandbox
    sb.set_member_state("MBR-sb", connection_status="CONNECTED")
    _read_once(hooks, "MBR-sb")
    sb.set_member_state("MBR-sb", connection_status="DENIED")
    sb.webhooks.wait()
    jobs.apply_webhooks(hooks.rt, clock=utc_now)
    m = hooks.member("MBR-sb")
    assert m is not None
    assert m.reauth_state == "awaiting_user"
    # CONNECTION_STATUS and MEMBER, each sent twice: two rows, each with one duplicate.
    assert sorted((e.event_type, e.duplicates) for e in hooks.events()) == [
        ("CONNECTION_STATUS", 1),
        ("MEMBER", 1),
    ]
    assert len(hooks.notifications("MBR-sb")) == 1
    sb.set_member_state("MBR-sb", connection_status="CONNECTED")
    sb.webhooks.wait()
    jobs.apply_webhooks(hooks.rt, clock=utc_now)
    m = hooks.member("MBR-sb")
    assert m is not None
    assert m.reauth_state == "idle"


def test_sandbox_out_of_order_webhooks_cannot_reopen_an_episode(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-ooo")
    _sandbox_sends(hooks)
    sb = hooks.sandbox.sandbox
    sb.set_member_state("MBR-ooo", connection_status="CONNECTED")
    _read_once(hooks, "MBR-ooo")
    sb.webhooks.hold()
    sb.set_member_state("MBR-ooo", connection_status="DENIED")
    sb.set_member_state("MBR-ooo", connection_status="CONNECTED")
    assert httpx.post(
        f"{hooks.sandbox.base_url}/_sandbox/webhooks/release?order=reverse"
    ).json() == {"released": 3}
    sb.webhooks.wait()
    jobs.apply_webhooks(hooks.rt, clock=utc_now)
    m = hooks.member("MBR-ooo")
    assert m is not None
    assert m.reauth_state == "idle"
    assert hooks.notifications("MBR-ooo") == []


def test_sandbox_retries_a_failed_delivery(hooks: Hooks) -> None:
    _member(hooks.rt, "MBR-retry")
    _sandbox_sends(hooks, webhook_password="wrong", webhook_retries=2)
    sb = hooks.sandbox.sandbox
    _read_once(hooks, "MBR-retry")
    sb.set_member_state("MBR-retry", connection_status="CONNECTED")
    sb.webhooks.wait()
    assert sb.webhooks.attempts == [("MEMBER", 401)] * 3
    assert hooks.events() == []


class _SlowQueueing:
    """Follow-ups whose queueing of the apply job hangs until released (a slow broker)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.prepared = 0

    def apply_webhooks(self) -> None:
        self.release.wait(10)
        self.calls += 1

    def prepare(self) -> None:
        self.prepared += 1  # a broker that hangs at start-up too
        self.release.wait(10)

    def close(self) -> None:
        self.release.set()


def wait_until(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_answer_does_not_wait_for_the_apply_job_to_be_queued(
    db_url: str, sandbox: RunningSandbox
) -> None:
    """204 once the row is committed; the apply job is queued after, and a commit made while
    one is being queued shares the next queueing instead of starting its own. Start-up does
    not wait for the follow-ups' preparation (a hung broker)."""
    settings = make_settings(
        db_url, sandbox, mx_webhook_username=USER, mx_webhook_password=PASSWORD
    )
    web = Runtime(settings)
    slow = _SlowQueueing()
    web._followups = slow  # type: ignore[assignment]
    try:
        with serve_in_thread(create_app(web), name="reauth-serve") as port:
            url = f"http://127.0.0.1:{port}/mx/webhooks"
            # Started at start-up and hanging: the server answers all the same.
            wait_until(lambda: slow.prepared == 1)
            for i in range(3):
                answer = httpx.post(url, json=_status(f"MBR-slow-{i}"), auth=AUTH, timeout=5)
                assert answer.status_code == 204
            with web.sessions() as s:
                assert s.scalar(select(func.count()).select_from(WebhookEvent)) == 3
            assert slow.calls == 0  # all three answered while the first queueing hangs
            slow.release.set()
            deadline = time.monotonic() + 5
            while slow.calls < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            assert slow.calls == 2  # the first, then one for the two commits made meanwhile
    finally:
        slow.release.set()
        web.close()


def test_prepare_warms_the_hand_on_and_never_raises(
    db_url: str, sandbox: RunningSandbox, redis_url: str
) -> None:
    """``reauth serve`` prepares its follow-ups at start-up (the Celery app imported, the broker
    and the flag's Redis connected), so the first webhook's apply job is queued at once; with
    Redis down, prepare logs and returns, and the intake's own fallbacks take over."""
    import structlog

    from worker.app.followups import CeleryFollowups

    up = Runtime(make_settings(db_url, sandbox, redis_url=redis_url))
    down = Runtime(make_settings(db_url, sandbox, redis_url="redis://127.0.0.1:1/0"))
    try:
        for rt in (up, down):
            assert isinstance(rt.followups, CeleryFollowups)
        with structlog.testing.capture_logs() as events:
            up.followups.prepare()
            down.followups.prepare()
        assert [e["event"] for e in events] == ["followups.ready", "followups.prepare_failed"]
        assert events[1]["error"] == "redis: ConnectionError"
    finally:
        up.close()
        down.close()
