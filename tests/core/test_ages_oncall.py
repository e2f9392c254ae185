"""Times for people and the on-call hints: exact strings with a fixed ``now``, and each hint
firing exactly when its condition holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.core.ages import iso, parse_window, relative, when
from worker.core.oncall import GAVE_UP_MIN, OUTBOX_BACKLOG_MIN, hints

NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(seconds=-45), "45 s ago"),
        (timedelta(minutes=-4), "4 min ago"),
        (timedelta(minutes=-89), "89 min ago"),
        (timedelta(hours=23), "in 23 h"),
        (timedelta(hours=35), "in 35 h"),
        (timedelta(days=-3, hours=-2), "3 d ago"),
    ],
)
def test_relative(delta: timedelta, text: str) -> None:
    assert relative(NOW + delta, NOW) == text


def test_when_renders_iso_utc_with_the_age_and_takes_naive_as_utc() -> None:
    assert iso(NOW) == "2026-11-30T08:00:00Z"
    assert when("2026-11-30T07:56:00.123456+00:00", NOW) == "2026-11-30T07:56:00Z (4 min ago)"
    assert when(datetime(2026, 12, 1, 7, 0), NOW) == "2026-12-01T07:00:00Z (in 23 h)"
    assert when(None, NOW) == "-"


def _status(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "members": {"idle/-": 50, "pending/expired": 5},
        "members_total": 55,
        "outbox": {"pending": 0, "sent": 38, "dead": 0, "canceled": 0},
        "outbox_oldest_pending_at": None,
        "gave_up": 0,
        "mx_paused": None,
        "last_scan": {
            "trigger": "beat",
            "started_at": (NOW - timedelta(minutes=4)).isoformat(),
            "finished_at": (NOW - timedelta(minutes=3)).isoformat(),
            "duration_s": 1.5,
            "claimed": 5,
            "batches": 1,
            "skipped_lock": False,
            "interrupted": False,
        },
    }
    return {**base, **over}


def _keys(status: dict[str, Any]) -> list[str]:
    return [h.key for h in hints(status, NOW, scan_interval=INTERVAL)]


def test_a_healthy_fleet_has_no_hint() -> None:
    assert _keys(_status()) == []


def test_paused_fleet_names_the_note_the_end_and_the_unpause_command() -> None:
    until = (NOW + timedelta(minutes=4)).isoformat()
    (h,) = hints(_status(mx_paused={"why": "MxUnauthorized: 401", "until": until}), NOW,
                 scan_interval=INTERVAL)  # fmt: skip
    assert h.key == "mx_paused"
    assert "2026-11-30T08:04:00Z (in 4 min)" in h.problem
    assert "MxUnauthorized: 401" in h.problem
    assert any("reauth unpause-mx --why" in a for a in h.actions)


def test_dead_notifications_point_at_retry_dead() -> None:
    (h,) = hints(_status(outbox={"pending": 0, "sent": 1, "dead": 3}), NOW, scan_interval=INTERVAL)
    assert h.key == "outbox_dead"
    assert h.problem.startswith("3 notification(s) are dead")
    assert any(a.endswith("reauth notifications retry-dead") for a in h.actions)


def test_outbox_backlog_by_size_or_by_age() -> None:
    young = (NOW - timedelta(minutes=29)).isoformat()
    old = (NOW - timedelta(minutes=31)).isoformat()
    assert _keys(_status(outbox={"pending": 5}, outbox_oldest_pending_at=young)) == []
    assert _keys(_status(outbox={"pending": 5}, outbox_oldest_pending_at=old)) == ["outbox_backlog"]
    big = _status(outbox={"pending": OUTBOX_BACKLOG_MIN}, outbox_oldest_pending_at=young)
    assert _keys(big) == ["outbox_backlog"]


def test_user_grouping_window_is_not_a_backlog() -> None:
    """With ``user`` grouping a row waits up to the window on purpose: the age rule counts
    from the end of the window (a 1 h window held for 80 min is fine; for 91 min it is late)."""
    grouped = {"mode": "user", "window_s": 3600}
    held = (NOW - timedelta(minutes=80)).isoformat()
    late = (NOW - timedelta(minutes=91)).isoformat()
    assert _keys(_status(outbox={"pending": 5}, outbox_oldest_pending_at=held,
                         notify_grouping=grouped)) == []  # fmt: skip
    assert _keys(_status(outbox={"pending": 5}, outbox_oldest_pending_at=held)) == [
        "outbox_backlog"
    ]
    assert _keys(_status(outbox={"pending": 5}, outbox_oldest_pending_at=late,
                         notify_grouping=grouped)) == ["outbox_backlog"]  # fmt: skip


def test_gave_up_spike_needs_both_a_count_and_a_share() -> None:
    n = GAVE_UP_MIN
    few = {"pending/expired": 100, f"gave_up/{'expired'}": n}  # 9 % of open episodes
    many = {"pending/expired": 30, "gave_up/expired": n, "gave_up/denied": 2}
    small = {"pending/expired": 0, "gave_up/denied": n - 1}
    assert _keys(_status(members=few)) == []
    assert _keys(_status(members=small)) == []
    (h,) = hints(_status(members=many), NOW, scan_interval=INTERVAL)
    assert h.key == "gave_up"
    assert h.problem == "12 member(s) gave up (29% of open episodes; most with reason expired)"
    assert any("reauth rerun --reason expired --force" in a for a in h.actions)


def test_scan_never_ran_interrupted_or_stale() -> None:
    last = _status()["last_scan"]
    assert _keys(_status(last_scan=None)) == ["no_scan"]
    assert _keys(_status(last_scan={**last, "interrupted": True})) == ["scan_interrupted"]
    stale = (NOW - 3 * INTERVAL - timedelta(seconds=1)).isoformat()
    fresh = (NOW - 3 * INTERVAL).isoformat()
    assert _keys(_status(last_scan={**last, "started_at": stale})) == ["scan_stale"]
    assert _keys(_status(last_scan={**last, "started_at": fresh})) == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("24h", 86400), ("24 h", 86400), (" 7D ", 7 * 86400),
     ("2w", 14 * 86400), ("3650d", 3650 * 86400)],
)  # fmt: skip
def test_parse_window(text: str, seconds: int) -> None:
    """The one ``--since`` parser (reauth report, reauth webhooks list/stats)."""
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "whole number and a unit"), ("30", "whole number"), ("1.5d", "whole number"),
     ("-3d", "whole number"), ("3y", "unit"), ("forever", "unit"), ("0h", "more than 0"),
     ("3651d", "at most 10 years")],
)  # fmt: skip
def test_parse_window_names_the_option_and_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="--window") as caught:
        parse_window(text, "--window")
    assert why in str(caught.value)
