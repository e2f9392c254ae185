"""The funnel report as one self-contained HTML page (``reauth report --html``, ``/ops/report``).

No external asset and no script: the styles are inline (with the CSP nonce when served), the
charts are inline SVG drawn with presentation attributes (a strict CSP forbids ``style=``), and
every value from the data is escaped. Renders what :func:`worker.service.report.build` returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

STAGE_LABELS = {
    "detected": "Detected",
    "link": "Link generated",
    "notified": "Notified",
    "clicked": "Clicked",
    "opened": "Window opened",
    "result": "OAuth result",
    "confirmed": "Reconnected (confirmed)",
    "aggregated": "Aggregated",
}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
  color:#1d2433;background:#f5f6f8}
main{max-width:980px;margin:0 auto;padding:24px 20px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px}
.sub{color:#5b6474;margin:0 0 20px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:12px 16px;flex:1;
  min-width:120px}
.card b{display:block;font-size:24px}.card span{color:#5b6474;font-size:13px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:16px 18px;
  margin-top:16px}
section h2{margin-top:0}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eceff3}
th{color:#5b6474;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}table+h2{margin-top:24px}
.ok{color:#1a7f37}.bad{color:#b42318}.muted{color:#5b6474;font-size:13px}
svg{display:block;max-width:100%;height:auto}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def pct(value: object) -> str:
    return "-" if value is None else f"{float(str(value)) * 100:.1f}%"


def hours(value: object) -> str:
    """Hours for people: minutes under an hour."""
    if value is None:
        return "-"
    h = float(str(value))
    if h * 60 < 1:
        return "< 1 min"  # minute resolution: reconnected within the minute it was detected
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def _funnel_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars, one per stage: width ∝ count, labels with count and conversion."""
    width, label_w, row_h, bar_max = 900, 190, 38, 340
    top = max((int(r["count"]) for r in rows), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {row_h * len(rows) + 8}" '
        f'width="{width}" role="img" aria-label="Funnel: episodes reaching each stage">'
    ]
    for i, r in enumerate(rows):
        y = 4 + i * row_h
        n = int(r["count"])
        w = max(2.0, bar_max * n / top) if n else 0.0
        prev = "" if r["of_previous"] is None else f" · {pct(r['of_previous'])} of previous"
        parts.append(
            f'<g data-stage="{_e(r["stage"])}">'
            f'<text x="0" y="{y + 23}" font-size="14" fill="#1d2433">'
            f"{_e(STAGE_LABELS.get(str(r['stage']), r['stage']))}</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 12}" rx="3" '
            f'fill="#3565d8"/>'
            f'<text x="{label_w + w + 8:.1f}" y="{y + 23}" font-size="14" fill="#1d2433">'
            f'<tspan font-weight="700" class="count">{n:,}</tspan>'
            f'<tspan fill="#5b6474"> {pct(r["of_detected"])} of detected{_e(prev)}</tspan>'
            f"</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


_HOUR_STEPS = (0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720, 2160)


def _curve_svg(points: Sequence[Sequence[float]]) -> str:
    """Cumulative share of detected episodes reconnected vs hours since detection (a step
    line), with axes and ticks."""
    width, height, left, bottom, right, top = 900, 320, 56, 40, 20, 14
    pw, ph = width - left - right, height - top - bottom
    if len(points) < 2:
        return '<p class="muted">No episode has been reconnected in this window yet.</p>'
    top_x = max(float(p[0]) for p in points) or 1.0
    # Round axes: the x step is a familiar span of hours, the y axis ends on a multiple of 10%.
    step = next((s for s in _HOUR_STEPS if top_x / s <= 8), _HOUR_STEPS[-1])
    max_x = math.ceil(top_x / step) * step
    ticks_x = int(max_x / step)
    max_y = min(1.0, math.ceil(max(float(p[1]) for p in points) * 10 + 0.001) / 10)

    def sx(x: float) -> float:
        return left + pw * x / max_x

    def sy(y: float) -> float:
        return top + ph * (1 - y / max_y)

    d = [f"M{sx(0):.1f},{sy(0):.1f}"]
    prev_y = 0.0
    for x, y in points[1:]:
        d.append(f"L{sx(float(x)):.1f},{sy(prev_y):.1f}L{sx(float(x)):.1f},{sy(float(y)):.1f}")
        prev_y = float(y)
    d.append(f"L{sx(max_x):.1f},{sy(prev_y):.1f}")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        'role="img" aria-label="Share of detected episodes reconnected by hours since detection">'
    ]
    ticks_y = round(max_y * 10)
    for i in range(ticks_y + 1):
        yv = max_y * i / ticks_y
        yy = sy(yv)
        parts.append(
            f'<line x1="{left}" y1="{yy:.1f}" x2="{width - right}" y2="{yy:.1f}" '
            f'stroke="#eceff3"/><text x="{left - 8}" y="{yy + 4:.1f}" font-size="12" '
            f'text-anchor="end" fill="#5b6474">{yv * 100:.0f}%</text>'
        )
    for i in range(ticks_x + 1):
        xv = step * i
        xx = sx(xv)
        parts.append(
            f'<text x="{xx:.1f}" y="{height - bottom + 18}" font-size="12" text-anchor="middle" '
            f'fill="#5b6474">{xv:g} h</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="#9aa3b2"/>'
        f'<path d="{"".join(d)}" fill="none" stroke="#1a7f37" stroke-width="2.5"/>'
        f'<text x="{left + pw / 2:.1f}" y="{height - 4}" font-size="12" text-anchor="middle" '
        f'fill="#5b6474">hours since detection</text></svg>'
    )
    return "".join(parts)


def _stage_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    return {str(r["stage"]): int(r["count"]) for r in rows}


def _groups_table(report: dict[str, Any]) -> str:
    groups = report["groups"]
    if not groups:
        return ""
    cols = ["detected", "notified", "clicked", "opened", "result", "confirmed"]
    head = "".join(f'<th class="num">{_e(STAGE_LABELS[c])}</th>' for c in cols)
    rows = []
    for g in groups:
        counts = _stage_counts(g["funnel"])
        conv = counts["confirmed"] / counts["detected"] if counts["detected"] else None
        t = g["time_to_reconnect"]
        cells = "".join(f'<td class="num" data-k="{c}">{counts[c]:,}</td>' for c in cols)
        rows.append(
            f'<tr data-group="{_e(g["key"])}"><td>{_e(g["key"])}</td>{cells}'
            f'<td class="num" data-k="conversion">{pct(conv)}</td>'
            f'<td class="num">{hours(t["p50_hours"])}</td>'
            f'<td class="num">{hours(t["p90_hours"])}</td></tr>'
        )
    return (
        f"<section><h2>By {_e(report['by'])}</h2><table><thead><tr><th>{_e(report['by'])}</th>"
        f'{head}<th class="num">Detected → reconnected</th><th class="num">p50</th>'
        f'<th class="num">p90</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _alerts(report: dict[str, Any]) -> str:
    alerts = report["alerts"]
    if alerts:
        rows = "".join(
            f'<tr data-institution="{_e(a["institution"])}"><td class="bad">'
            f"{_e(a['institution'])}</td>"
            f'<td class="num">{int(a["tried"]):,}</td><td class="num">{int(a["failed"]):,}</td>'
            f'<td class="num">{pct(a["failure_rate"])}</td>'
            f'<td class="num">{pct(a["wilson_lower"])}</td>'
            f'<td class="num">{pct(a["rest_rate"])}</td></tr>'
            for a in alerts
        )
        body = (
            '<table id="alerts"><thead><tr><th>Institution</th><th class="num">Clicked</th>'
            '<th class="num">Not reconnected</th><th class="num">Share</th>'
            '<th class="num">Lower bound (95%)</th><th class="num">Rest of fleet</th></tr>'
            f"</thead><tbody>{rows}</tbody></table>"
        )
    else:
        body = '<p id="alerts" class="ok">No institution stands out.</p>'
    return (
        f"<section><h2>Institutions failing far more than the rest</h2>{body}"
        f'<p class="muted">{_e(report["alert_rule"])}</p></section>'
    )


def _reminder_label(key: str) -> str:
    return "before any reminder" if key == "0" else f"reminder {_e(key)}"


def render(report: dict[str, Any], *, nonce: str | None = None) -> str:
    """The page for ``report`` (a nonce is put on the style element when served under CSP)."""
    overall = report["overall"]
    counts = _stage_counts(overall["funnel"])
    times = overall["time_to_reconnect"]
    detected = counts.get("detected", 0)
    confirmed = counts.get("confirmed", 0)
    conv = confirmed / detected if detected else None
    nonce_attr = f' nonce="{_e(nonce)}"' if nonce else ""
    cards = "".join(
        f'<div class="card" data-card="{key}"><b>{value}</b><span>{label}</span></div>'
        for key, value, label in (
            ("detected", f"{detected:,}", "episodes detected"),
            ("confirmed", f"{confirmed:,}", "reconnected (confirmed)"),
            ("conversion", pct(conv), "detected → reconnected"),
            ("p50", hours(times["p50_hours"]), "median time to reconnect"),
            ("p90", hours(times["p90_hours"]), "p90 time to reconnect"),
        )
    )
    outcome_rows = "".join(
        f'<tr data-outcome="{_e(k)}"><td>{_e(k.replace("_", " "))}</td>'
        f'<td class="num">{int(v):,}</td></tr>'
        for k, v in overall["outcomes"].items()
    )
    open_n = detected - sum(int(v) for v in overall["outcomes"].values())
    reminder_rows = (
        "".join(
            f'<tr data-reminder="{_e(k)}"><td>{_reminder_label(k)}'
            f'</td><td class="num">{int(v):,}</td></tr>'
            for k, v in report["converting_reminder"].items()
        )
        or '<tr><td colspan="2" class="muted">none yet</td></tr>'
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>Re-authentication funnel · last {_e(report['since'])}</title>"
        f"<style{nonce_attr}>{_CSS}</style></head><body><main>"
        "<h1>Re-authentication funnel</h1>"
        f'<p class="sub">Episodes detected in the last {_e(report["since"])} '
        f"({_e(report['from'][:16].replace('T', ' '))} → "
        f"{_e(report['until'][:16].replace('T', ' '))} UTC)</p>"
        f'<div class="cards">{cards}</div>'
        f'<section><h2>Funnel</h2><div id="funnel">{_funnel_svg(overall["funnel"])}</div>'
        '<p class="muted">"Window opened" is known only when MX\'s window reports back (a '
        "result); a press of Reconnect that goes straight to MX cannot tell it from the click."
        "</p></section>"
        '<section><h2>Time to reconnect</h2><div id="curve">'
        f"{_curve_svg(overall['curve'])}</div>"
        '<p class="muted">Cumulative share of the episodes detected in the window that MX '
        "confirmed reconnected, by hours since detection.</p></section>"
        '<section><h2>How episodes ended</h2><table id="outcomes"><tbody>'
        f'{outcome_rows}<tr data-outcome="open"><td>still open</td>'
        f'<td class="num">{open_n:,}</td></tr></tbody></table>'
        '<h2>Which reminder converted</h2><table id="reminders"><tbody>'
        f"{reminder_rows}</tbody></table></section>"
        f"{_groups_table(report)}{_alerts(report)}"
        "</main></body></html>"
    )
