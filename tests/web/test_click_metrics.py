"""``reauth_reconnect_clicks_total{outcome}``: each press of Reconnect counted once, by what was
decided (read from the process's own Prometheus registry, where the in-process app counts)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from models import Member, Notification
from tests.web.conftest import SECRET, Served
from worker.clock import utc_now
from worker.core import tokens

OUTCOMES = ("minted", "rate_limited", "closed", "forbidden", "not_found", "expired", "mx_error")


def _counts() -> dict[str, float]:
    return {
        o: REGISTRY.get_sample_value("reauth_reconnect_clicks_total", {"outcome": o}) or 0.0
        for o in OUTCOMES
    }


def test_each_press_is_counted_by_its_outcome(served: Served, tmp_path: Path) -> None:
    (message,) = served.delivered(tmp_path)
    url = str(message["reconnect_url"])
    before = _counts()
    limit = served.settings.reconnect_clicks_per_hour
    codes = [httpx.post(url, follow_redirects=False).status_code for _ in range(limit + 1)]
    assert codes == [303] * limit + [429]
    assert httpx.post(url, headers={"Origin": "https://evil.example"}).status_code == 403
    unknown = tokens.sign(tokens.RECONNECT, uuid.uuid4(), utc_now() + timedelta(1), SECRET.encode())
    assert httpx.post(f"{served.base_url}/r/{unknown}").status_code == 404
    with served.worker.engine.connect() as conn:
        nid = conn.scalar(select(Notification.id))
    old = tokens.sign(tokens.RECONNECT, nid, utc_now() - timedelta(seconds=1), SECRET.encode())
    assert httpx.post(f"{served.base_url}/r/{old}").status_code == 410
    with served.worker.engine.begin() as conn:
        conn.execute(update(Member).values(reauth_state="idle"))
    assert httpx.post(url, follow_redirects=False).status_code == 200
    after = _counts()
    assert {o: after[o] - before[o] for o in OUTCOMES} == {
        "minted": limit, "rate_limited": 1, "closed": 1, "forbidden": 1, "not_found": 1,
        "expired": 1, "mx_error": 0,
    }  # fmt: skip
