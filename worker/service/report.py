"""``reauth report`` and ``GET /ops/report``: the re-authentication funnel as one document.

:func:`build` reads the episode summaries (never the events) with four grouped queries on the
``detected_at`` index (:mod:`worker.store.funnel`) and computes the rest in the core
(:mod:`worker.core.funnel`): conversion per stage, time to reconnect (p50/p90 and the curve),
which reminder converted, the institution alert list. The result is plain JSON-ready data; the
terminal table, ``--json`` and the HTML page (:mod:`worker.service.report_html`) all render it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from worker.core import funnel
from worker.core.funnel import By
from worker.errors import InputError
from worker.runtime import Runtime
from worker.store import funnel as store
from worker.store.db import read_only_session

ALERT_RULE = (
    f"An institution is listed when at least {funnel.ALERT_MIN_VOLUME} episodes reached a click "
    f"and the 95% Wilson lower bound of its share not confirmed reconnected exceeds the share "
    f"of all other institutions by {funnel.ALERT_MARGIN:.0%} or more."
)


def parse(since: str, by: str | None) -> tuple[int, By | None]:
    """Check ``--since`` and ``--by``: InputError naming the bad value, nothing read."""
    try:
        return funnel.parse_since(since), funnel.parse_by(by)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _hours(minutes: int | None) -> float | None:
    return None if minutes is None else round(minutes / 60, 2)


def _times(hist: dict[int, int]) -> dict[str, Any]:
    p50, p90 = funnel.percentile(hist, 0.5), funnel.percentile(hist, 0.9)
    return {
        "reconnected": sum(hist.values()),
        "p50_hours": _hours(p50),
        "p90_hours": _hours(p90),
    }


def build(
    rt: Runtime, *, since: str = "30d", by: str | None = None, now: datetime
) -> dict[str, Any]:
    """The report over episodes detected in the last ``since`` (e.g. ``30d``), grouped ``by``."""
    seconds, group = parse(since, by)
    start = now - timedelta(seconds=seconds)
    with read_only_session(rt.engine) as s:
        groups = store.group_counts(s, start, group)
        minutes = store.reconnect_minutes(s, start, group)
        converting = store.converting_reminders(s, start)
        rates = store.institution_rates(s, start)
    stages, outcomes = funnel.totals(groups)
    overall: dict[int, int] = {}
    for hist in minutes.values():
        for minute, n in hist.items():
            overall[minute] = overall.get(minute, 0) + n
    detected = stages.get(funnel.Stage.DETECTED.value, 0)
    return {
        "since": since,
        "from": start.isoformat(),
        "until": now.isoformat(),
        "by": group.value if group else None,
        "overall": {
            "funnel": funnel.conversion(stages),
            "outcomes": outcomes,
            "time_to_reconnect": _times(overall),
            "curve": [list(p) for p in funnel.reconnect_curve(overall, detected)],
        },
        "groups": [
            {
                "key": g.key,
                "funnel": funnel.conversion(g.stages),
                "outcomes": dict(g.outcomes),
                "time_to_reconnect": _times(minutes.get(g.key, {})),
            }
            for g in groups
        ]
        if group
        else [],
        "converting_reminder": {str(k): v for k, v in sorted(converting.items())},
        "alerts": funnel.alerts(rates),
        "alert_rule": ALERT_RULE,
    }
