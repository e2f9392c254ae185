"""Times for people: ISO 8601 in UTC with a relative age ("4 min ago", "in 23 h"), and the
look-back windows people type (``--since 30d``).

Pure: ``now`` is passed in. The on-call views (``reauth status``, ``reauth history``) use it so
a time reads the same everywhere and the age is right next to it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: (limit in seconds, unit seconds, suffix): the first row whose limit exceeds the age is used.
_UNITS = (
    (90, 1, "s"),
    (90 * 60, 60, "min"),
    (36 * 3600, 3600, "h"),
    (None, 86400, "d"),
)


def parse_time(value: datetime | str | None) -> datetime | None:
    """A datetime from a datetime or an ISO string; naive values are taken as UTC (SQLite)."""
    if value is None:
        return None
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def iso(at: datetime) -> str:
    """``at`` in UTC, to the second: ``2026-11-30T08:00:00Z``."""
    return at.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def span(delta: timedelta) -> str:
    """A duration as one rounded unit: ``45 s``, ``4 min``, ``23 h``, ``3 d``."""
    seconds = abs(delta.total_seconds())
    for limit, unit, suffix in _UNITS:
        if limit is None or seconds < limit:
            return f"{round(seconds / unit)} {suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def relative(at: datetime, now: datetime) -> str:
    """``4 min ago`` for the past, ``in 23 h`` for the future, ``now`` within a second."""
    delta = at - now
    if abs(delta.total_seconds()) < 1:
        return "now"
    return f"in {span(delta)}" if delta > timedelta(0) else f"{span(delta)} ago"


#: The units a window for people may be given in (``--since 30d``).
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest window: ten years (no table keeps anything longer).
_WINDOW_MAX = 3650 * 86400


def parse_window(text: str, option: str = "--since") -> timedelta:
    """A look-back window as people type it: a whole number and a unit (``90s``, ``30m``,
    ``24h``, ``7d``, ``2w``), more than 0, at most ten years. ValueError naming ``option`` and
    what is wrong otherwise. The one parser of every ``--since``."""
    raw = "".join(text.split()).lower()  # "24 h" as well as "24h"
    if len(raw) < 2 or raw[-1] not in _WINDOW_UNITS or not raw[:-1].isdigit():
        raise ValueError(
            f"{option} {text!r}: expected a whole number and a unit (s, m, h, d, w), e.g. 30d"
        )
    n, unit = int(raw[:-1]), _WINDOW_UNITS[raw[-1]]
    if n <= 0:
        raise ValueError(f"{option} {text!r}: must be more than 0")
    if n * unit > _WINDOW_MAX:
        raise ValueError(f"{option} {text!r}: at most 10 years")
    return timedelta(seconds=n * unit)


def when(value: datetime | str | None, now: datetime) -> str:
    """``2026-11-30T08:00:00Z (4 min ago)``, or ``-`` for no time."""
    at = parse_time(value)
    if at is None:
        return "-"
    return f"{iso(at)} ({relative(at, now)})"
