"""OpenTelemetry tracing (``reauth[otel]``): a member's path as spans, recorded by the SDK's
in-memory exporter from a real inline scan → regenerate → deliver against the sandbox; and no
opentelemetry import at all when tracing is off."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline_helpers import cli
from tests.web.test_webhooks import _member as webhook_member
from tests.web.test_webhooks import _serve as webhook_hooks
from tests.web.test_webhooks import _status as webhook_status
from worker import tracing
from worker.sandbox.server import RunningSandbox

# The otel extra; CI has it through the dev group. Skipped only where truly absent.
pytest.importorskip("opentelemetry.sdk", reason="reauth[otel] is not installed")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup("reauth-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in found if s.name == name]
    assert len(matching) == 1, (name, [s.name for s in found])
    return matching[0]


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def test_scan_regenerate_deliver_is_one_trace_with_links_and_client_spans(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], spans: InMemorySpanExporter
) -> None:
    f = tmp_path / "m.jsonl"
    rows = [
        {"member_guid": f"MBR-{i}", "user_guid": f"USR-{i}", "institution_code": "chase",
         "is_oauth": True, "connection_status": "EXPIRED"}
        for i in range(3)
    ]  # fmt: skip
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(capsys, "members", "import", str(f), "--json")[0] == 0
    spans.clear()
    code, out = cli(capsys, "scan", "--inline", "--json")
    assert (code, out["claimed"]) == (0, 3)
    found = list(spans.get_finished_spans())

    scan = _one(found, "reauth.scan")
    assert scan.parent is None
    regen = _one(found, "reauth.regenerate")
    assert _parent(regen) == _id(scan)
    assert regen.attributes is not None
    assert regen.attributes["reauth.batch_size"] == 3

    calls = [s for s in found if s.name == "reauth.mx_call"]
    assert sorted(str((s.attributes or {})["reauth.member_guid"]) for s in calls) == [
        "MBR-0", "MBR-1", "MBR-2",
    ]  # fmt: skip
    assert {_parent(s) for s in calls} == {_id(regen)}

    # httpx sees the MX requests although they run over the aiohttp-based transport.
    http = [s for s in found if _parent(s) in {_id(c) for c in calls}]
    assert len(http) >= 3
    urls = [str((s.attributes or {}).get("url.full", (s.attributes or {}).get("http.url")))
            for s in http]  # fmt: skip
    assert sum("oauth_window_uri" in u for u in urls) == 3, urls

    write = _one(found, "reauth.write")
    assert _parent(write) == _id(regen)
    assert {link.context.span_id for link in write.links} == {_id(c) for c in calls}
    sql = [s for s in found if _parent(s) == _id(write)]
    assert sql, "no SQLAlchemy span inside the batch's transaction"
    assert all(
        "db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {}) for s in sql
    )

    deliver = _one(found, "reauth.deliver")
    assert _parent(deliver) == _id(regen)
    relay = _one(found, "reauth.relay")
    assert _parent(relay) == _id(deliver)
    assert {link.context.span_id for link in relay.links} == {_id(c) for c in calls}
    sink = _one(found, "reauth.sink")
    assert _parent(sink) == _id(relay)
    assert (sink.attributes or {})["reauth.messages"] == 3
    assert {s.context.trace_id for s in found if s.context is not None} == {
        scan.context.trace_id if scan.context else 0
    }


def test_span_is_a_no_op_when_off() -> None:
    assert not tracing.enabled()
    with tracing.span("x", {"a": 1}) as current:
        assert current is None
    assert tracing.current() is None


def test_nothing_imports_opentelemetry_when_off(tmp_path: Path) -> None:
    """Zero cost when off: loading the CLI, the runtime and the service and calling setup()
    imports nothing of opentelemetry beyond what the libraries themselves import (redis-py's
    observability module loads parts of it when the package is installed: not ours to avoid)."""
    code = (
        "import sys\n"
        "import redis, redis.asyncio, sqlalchemy, celery, httpx, starlette, kombu\n"
        "base = set(sys.modules)\n"
        "import worker.cli, worker.cli.inspect, worker.runtime, worker.app.jobs\n"
        "import worker.service.regenerate, worker.web.app, worker.tracing\n"
        "import worker.mx.client, worker.notify.sinks\n"
        "assert not worker.tracing.setup('x')\n"
        "print(sorted(m for m in set(sys.modules) - base if m.startswith('opentelemetry')))\n"
    )
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_webhook_path_intake_then_apply_then_regenerate(
    spans: InMemorySpanExporter, db_url: str, sandbox: RunningSandbox
) -> None:
    """A webhook's path: the intake span on the web app; the apply job, under it the member's
    batch (trigger webhook) with its MX call. (Here the apply job runs inline after the POST;
    through Celery its span would continue the intake's trace.)"""
    for hooks in webhook_hooks(db_url, sandbox):
        webhook_member(hooks.rt, "MBR-hook")
        hooks.sandbox.sandbox.set_member_state("MBR-hook", connection_status="DENIED")
        assert hooks.post(webhook_status("MBR-hook")).status_code == 204
    found = list(spans.get_finished_spans())
    intake = _one(found, "reauth.webhook.intake")
    assert (intake.attributes or {})["reauth.webhook_type"] == "ANY"
    apply = _one(found, "reauth.apply_webhooks")
    regen = _one(found, "reauth.regenerate")
    assert _parent(regen) == _id(apply)
    assert (regen.attributes or {})["reauth.trigger"] == "webhook"
    (call,) = [s for s in found if s.name == "reauth.mx_call"]
    assert _parent(call) == _id(regen)  # not the runtime's first task's span
    assert [s for s in found if _parent(s) == _id(call)], "no httpx span under the MX call"


def test_a_grouped_delivery_later_links_to_each_members_mx_call(
    spans: InMemorySpanExporter, db_url: str, sandbox: RunningSandbox
) -> None:
    """``REAUTH_NOTIFY_GROUPING=user`` holds the rows for the window, so they go out later in
    another trace (a sweep): the relay's span links to the MX call of every member its message
    serves (the span that wrote each row), and the sink span is under it."""
    from datetime import timedelta

    from sqlalchemy import update

    from models import Member
    from tests.pipeline_helpers import make_settings, populate, scan_now
    from worker.app import jobs
    from worker.clock import utc_now
    from worker.config import NotifyGrouping
    from worker.runtime import Runtime

    window = timedelta(minutes=5)
    settings = make_settings(db_url, sandbox).model_copy(
        update={"notify_grouping": NotifyGrouping.USER, "grouping_window": window}
    )
    rt = Runtime(settings, inline=True)
    try:
        populate(rt.engine, 14, utc_now())
        with rt.sessions.begin() as s:
            s.execute(update(Member).values(user_guid="USR-ONE"))
        scan_now(rt, trigger="test")  # the rows are written, and held for the window
        scanned = list(spans.get_finished_spans())
        calls = {_id(s) for s in scanned if s.name == "reauth.mx_call"}
        assert len(calls) >= 3
        assert not [s for s in scanned if s.name == "reauth.sink"]  # nothing went out yet
        spans.clear()

        totals = jobs.deliver(rt, owner="sweep", clock=lambda: utc_now() + window)
    finally:
        rt.close()

    found = list(spans.get_finished_spans())
    deliver = _one(found, "reauth.deliver")
    assert deliver.parent is None  # a trace of its own, as a sweep's would be
    relay = _one(found, "reauth.relay")
    assert _parent(relay) == _id(deliver)
    attrs = relay.attributes or {}
    assert (attrs["reauth.messages"], attrs["reauth.grouping"]) == (1, "user")
    assert attrs["reauth.rows"] == totals["sent"] >= 3
    assert {link.context.span_id for link in relay.links} <= calls
    assert len(relay.links) == totals["sent"]  # one per member's row, each its own MX call
    assert len({link.context.span_id for link in relay.links}) == totals["sent"]
    sink = _one(found, "reauth.sink")
    assert _parent(sink) == _id(relay)


def test_traceparent_round_trip_and_bad_values(spans: InMemorySpanExporter) -> None:
    with tracing.span("x"):
        here = tracing.current()
    text = tracing.traceparent(here)
    assert text is not None
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", text)
    back = tracing.from_traceparent(text)
    assert back is not None
    assert here is not None
    assert (back.trace_id, back.span_id) == (here.trace_id, here.span_id)
    for bad in (None, "", "garbage", "00-xyz-abc-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        assert tracing.from_traceparent(bad) is None
