"""One message per person survives a SIGKILL between delivery and mark-sent.

``REAUTH_NOTIFY_GROUPING=user``: the worker's process group is killed right after the relay
handed grouped messages to the Redis stream and before it marked their rows sent. After the
notify lease a new worker redelivers: the same message ids with the same members, nothing else.
Every member who needs it is in exactly one message id on the stream (deduping on ``id`` loses
no one), and several members of one person share a message.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from models import Notification
from tests.e2e.e2e_helpers import celery_worker, kill_group, run_cli, wait_for
from tests.pipeline_helpers import populate
from tests.reliability.reliability_helpers import (
    STREAM,
    check_consistency,
    drive,
    env_for,
    nudger,
)
from worker.clock import utc_now
from worker.sandbox.config import SandboxConfig
from worker.sandbox.server import RunningSandbox, running_sandbox

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.redis,
]

MEMBERS = 112  # USR-0000 … USR-0096: the first 15 users have two members each


@pytest.fixture
def sandbox() -> Any:
    with running_sandbox(SandboxConfig(latency=0.01)) as sb:
        yield sb


def stream_messages(url: str) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(url)
    try:
        return [json.loads(f[b"payload"]) for _, f in r.xrange(STREAM)]
    finally:
        r.close()


def members_of(message: dict[str, Any]) -> tuple[str, ...]:
    if message["type"] == "reauth.oauth_links":
        return tuple(m["member_guid"] for m in message["members"])
    return (message["member_guid"],)


def test_grouped_messages_killed_after_delivery_are_redelivered_whole(
    pg_url: str, broker_url: str, sandbox: RunningSandbox, tmp_path: Path, engines: Any
) -> None:
    engine = engines(pg_url)
    expected = populate(engine, MEMBERS, utc_now())
    env = env_for(
        sandbox,
        db_url=pg_url,
        redis_url=broker_url,
        REAUTH_NOTIFY_GROUPING="user",
        # Long enough that both members of a person are due within it even on a loaded machine.
        REAUTH_GROUPING_WINDOW="15s",
    )
    marker = tmp_path / "failpoint.hits"
    armed = {**env, "REAUTH_FAILPOINT": "after_deliver", "REAUTH_FAILPOINT_FILE": str(marker)}

    with (
        celery_worker(armed, log_path=tmp_path / "doomed.log", name="doomed") as doomed,
        nudger(broker_url) as nudge,
    ):
        assert run_cli(env, "scan").returncode == 0
        # Held for the window, then delivered by a dispatch (what beat's sweeper does).
        deadline = time.monotonic() + 90
        while not marker.exists() and time.monotonic() < deadline:
            nudge.dispatch()
            time.sleep(1)
        wait_for(marker.exists, timeout=5, what="failpoint after_deliver")
        time.sleep(0.3)
        kill_group(doomed)
    check_consistency(engine)
    with engine.connect() as c:
        grouped_before = dict(
            c.execute(
                select(Notification.id, Notification.group_id).where(
                    Notification.group_id.is_not(None)
                )
            ).all()
        )
    assert grouped_before, "the relay stores group ids before it delivers"

    with (
        celery_worker(env, log_path=tmp_path / "rescuer.log", name="rescuer"),
        nudger(broker_url) as nudge,
    ):
        time.sleep(3.2)  # the notify lease (3 s) runs out
        drive(nudge, engine, expected, timeout=120)

    messages = stream_messages(broker_url)
    by_id: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    ids_of_member: dict[str, set[str]] = defaultdict(set)
    for message in messages:
        by_id[message["id"]].add(members_of(message))
        for guid in members_of(message):
            ids_of_member[guid].add(message["id"])
    # A redelivery repeats a message whole: same id, same members.
    assert all(len(variants) == 1 for variants in by_id.values()), by_id
    assert len(messages) > len(by_id), "the kill came after XADD: something was redelivered"
    # Exactly one message id per notified member, and every notified member delivered.
    with engine.connect() as c:
        rows = c.execute(select(Notification.payload, Notification.status)).all()
    notified = {r.payload["member_guid"] for r in rows}
    assert len(rows) == sum(k.notified for k in expected.values())
    assert {r.status for r in rows} == {"sent"}
    assert set(ids_of_member) == notified
    assert all(len(ids) == 1 for ids in ids_of_member.values())
    # One person, one message: some people have two members, and they share one.
    assert any(m["type"] == "reauth.oauth_links" for m in messages)
    # Groups formed before the crash kept their ids.
    with engine.connect() as c:
        after = dict(c.execute(select(Notification.id, Notification.group_id)).all())
    assert all(after[nid] == gid for nid, gid in grouped_before.items())
