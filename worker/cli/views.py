"""The on-call views rendered for a person: ``reauth status`` and ``reauth history``.

Pure rendering of the service's result documents (the ones ``--json`` prints) into rich
renderables; ``now`` is passed in so ages are testable. Every value goes through ``safe`` (the
console has markup off, so data is never read as markup either).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from worker.cli.output import safe
from worker.core.ages import parse_time, span, when
from worker.core.oncall import Hint, hints

#: Keys of an event shown in its own column (the rest go to details).
_EVENT_COLUMNS = ("at", "kind")
#: Event fields that are times (rendered with their age).
_TIME_FIELDS = frozenset({"sent_at", "next_attempt_at", "created_at"})


def _kv(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, padding=(0, 2))
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, safe(value))
    return table


def _value(key: str, value: Any, now: datetime) -> str:
    if isinstance(value, datetime) or (key in _TIME_FIELDS and value is not None):
        return when(value, now)
    if value is None:
        return "-"
    return str(value)


def _grouping(grouping: dict[str, Any] | None) -> str:
    if not grouping or grouping.get("mode") != "user":
        return "one per member and reminder"
    window = span(timedelta(seconds=int(grouping.get("window_s", 0))))
    return f"one per person (reauth.oauth_links); pending rows wait up to {window} for siblings"


def _funnel(stages: dict[str, int]) -> str:
    """The day's episodes through the stages a person acts on (``reauth report`` has all)."""
    shown = ("detected", "notified", "clicked", "confirmed")
    return " → ".join(f"{name} {int(stages.get(name, 0)):,}" for name in shown)


def render_hints(found: list[Hint]) -> RenderableType:
    """What to do next, or a line saying nothing is stuck."""
    if not found:
        return Text("nothing stuck", style="green")
    parts: list[RenderableType] = []
    for h in found:
        parts.append(Text("! " + safe(h.problem), style="bold yellow"))
        parts.extend(Text("    → " + safe(a)) for a in h.actions)
    return Panel(Group(*parts), title="what to do next", title_align="left", border_style="yellow")


def render_status(
    result: dict[str, Any], now: datetime, *, scan_interval: timedelta
) -> list[RenderableType]:
    """``reauth status`` for a person: members, outbox, grouping, the day's funnel, last scan,
    MX pause, hints."""
    members = Table(title="members by state / reason", title_justify="left")
    members.add_column("state")
    members.add_column("reason")
    members.add_column("count", justify="right")
    for key, n in result["members"].items():
        state, _, reason = key.partition("/")
        members.add_row(safe(state), safe(reason or "-"), str(n))
    members.add_row("total", "", str(result["members_total"]), style="bold")

    outbox = Table(title="outbox", title_justify="left")
    for name in result["outbox"]:
        outbox.add_column(safe(name), justify="right")
    outbox.add_row(*(str(n) for n in result["outbox"].values()))

    rows: list[tuple[str, str]] = [
        ("gave up", str(result["gave_up"])),
        ("oldest pending", when(result.get("outbox_oldest_pending_at"), now)),
        ("messages", _grouping(result.get("notify_grouping"))),
    ]
    day = result.get("funnel_24h")
    if day:
        rows.append(("funnel, 24 h", _funnel(day)))
    paused = result.get("mx_paused")
    rows.append(
        ("MX calls", "running" if not paused else f"PAUSED until {when(paused['until'], now)}")
    )
    if paused:
        rows.append(("pause note", str(paused["why"])))
    last = result["last_scan"]
    if last is None:
        rows.append(("last scan", "never"))
    else:
        state = (
            "interrupted"
            if last.get("interrupted")
            else "skipped (another scan held the lock)"
            if last["skipped_lock"]
            else "finished"
            if last.get("finished_at")
            else "running or died"
        )
        duration = "-" if last["duration_s"] is None else f"{last['duration_s']:.1f} s"
        rows += [
            ("last scan", f"{when(last['started_at'], now)} by {last['trigger']}"),
            ("  outcome", state),
            ("  duration", duration),
            ("  claimed", f"{last['claimed']} members in {last['batches']} batches"),
        ]
    return [
        members,
        outbox,
        _kv("fleet", rows),
        render_hints(hints(result, now, scan_interval=scan_interval)),
    ]


def render_history(result: dict[str, Any], now: datetime) -> list[RenderableType]:
    """``reauth history`` for a person: the member as key/value rows, then its events."""
    member = result["member"]
    rows = [(k.replace("_", " "), _value(k, v, now)) for k, v in member.items()]
    events = Table(title=f"history of {safe(member['member_guid'])}", title_justify="left")
    events.add_column("at")
    events.add_column("age", justify="right")
    events.add_column("kind")
    events.add_column("details")
    for e in result["events"]:
        details = "  ".join(
            f"{k}={_value(k, v, now)}"
            for k, v in e.items()
            if k not in _EVENT_COLUMNS and v is not None
        )
        at = parse_time(e["at"])
        stamp, _, age = when(at, now).partition(" ")
        events.add_row(safe(stamp), safe(age.strip("()")), safe(e["kind"]), safe(details))
    if not result["events"]:
        events.add_row("-", "", "", "no attempts, notifications or ops actions yet")
    return [_kv("member", rows), events]
