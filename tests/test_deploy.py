"""The Grafana dashboard and the Prometheus alerts name only metrics that exist, and are well
formed.

``promtool`` is not installed here, so the PromQL is checked by a small tokenizer, no more: the
brackets balance, every function is one PromQL knows, label matchers are ``name op "string"``,
range selectors are durations (or subqueries), and no two operands stand side by side without an
operator. Operator precedence, types (vector vs scalar) and label matching are NOT checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from worker import metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "reauth.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"

FUNCTIONS = frozenset(
    [
        "abs",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "histogram_count",
        "histogram_sum",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "time",
        "timestamp",
        "vector",
        "year",
    ]
)
AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ]
)
KEYWORDS = frozenset(["and", "or", "unless", "bool", "offset"])
GROUPING = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
#: Grafana's own variables, replaced by a duration before parsing.
GRAFANA_VARS = re.compile(r"\$__(range|rate_interval|interval)\b")

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<range>\[[^\]]*\])
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+(?![A-Za-z0-9_]))
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=|==|<=|>=)
  | (?P<op>[-+*/%^<>=])
  | (?P<punct>[(){},])
    """,
    re.VERBOSE,
)
_DURATION = r"(\d+(ms|s|m|h|d|w|y))+"
_RANGE = re.compile(rf"\[{_DURATION}(:({_DURATION})?)?\]")


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise AssertionError(f"unexpected {expr[pos : pos + 10]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def parse_promql(expr: str) -> set[str]:
    """The metric names ``expr`` selects; AssertionError when it is malformed (as above)."""
    toks = _tokens(GRAFANA_VARS.sub("5m", expr))
    depth: list[str] = []
    pairs = {")": "(", "}": "{"}
    names: set[str] = set()
    previous = "op"  # the kind of the last significant token: operand or operator
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "punct" and text in "({":
            if text == "{":  # label matchers: name op "string" [, ...]
                j = i + 1
                while toks[j] != ("punct", "}"):
                    assert toks[j][0] == "ident", f"label name expected in {expr!r}"
                    assert toks[j + 1][1] in {"=", "!=", "=~", "!~"}, f"matcher in {expr!r}"
                    assert toks[j + 2][0] == "string", f"label value must be quoted: {expr!r}"
                    j += 3
                    if toks[j] == ("punct", ","):
                        j += 1
                i = j + 1
                previous = "operand"
                continue
            depth.append(text)
            previous = "op"
        elif kind == "punct" and text in ")}":
            assert depth, f"unbalanced {text!r} in {expr!r}"
            assert depth.pop() == pairs[text], f"unbalanced {text!r} in {expr!r}"
            previous = "operand"
        elif kind == "punct":  # a comma between function arguments
            assert depth, f"stray comma in {expr!r}"
            previous = "op"
        elif kind == "range":
            assert _RANGE.fullmatch(text), f"bad range {text!r} in {expr!r}"
            assert previous == "operand", f"range without a selector in {expr!r}"
        elif kind == "ident" and text in GROUPING:
            assert nxt == ("punct", "("), f"{text} needs a label list in {expr!r}"
            j = i + 2
            while toks[j] != ("punct", ")"):
                assert toks[j][0] == "ident" or toks[j] == ("punct", ","), expr
                j += 1
            i = j + 1
            continue
        elif kind == "duration":
            assert toks[i - 1] == ("ident", "offset"), f"stray duration {text!r} in {expr!r}"
            previous = "operand"
        elif kind == "ident" and text in KEYWORDS:
            previous = "op"
        elif kind == "ident" and nxt == ("punct", "("):
            assert text in FUNCTIONS | AGGREGATIONS, f"unknown function {text!r} in {expr!r}"
            assert previous == "op", f"operand before {text!r} in {expr!r}"
        elif kind == "ident" and text in AGGREGATIONS and nxt[1] in GROUPING:
            pass  # ``sum by (x) (...)``
        elif kind in {"ident", "number", "string"}:
            assert previous == "op", f"two operands side by side at {text!r} in {expr!r}"
            if kind == "ident":
                names.add(text)
            previous = "operand"
        else:  # operators
            previous = "op"
        i += 1
    assert not depth, f"unclosed {depth} in {expr!r}"
    assert previous == "operand", f"{expr!r} ends with an operator"
    return names


def exposed_names() -> set[str]:
    """Every series name worker.metrics exposes: counters as ``_total`` (and ``_created``),
    histograms as ``_bucket``/``_sum``/``_count``, gauges as is."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + s for s in suffixes[family.type])
    return names


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- the checker itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (le) (rate(reauth_mx_latency_seconds_bucket[5m]))",
         {"reauth_mx_latency_seconds_bucket"}),
        ('max(a{x="1", y=~"b|c"}) / on (x) group_left (y) b offset 5m > bool 2', {"a", "b"}),
        ("delta(max(a)[1h:5m]) > 50 and c", {"a", "c"}),
        ("increase(a[$__range])", {"a"}),
    ],
)  # fmt: skip
def test_the_checker_extracts_metric_names(expr: str, names: set[str]) -> None:
    assert parse_promql(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(a[5m])",  # unbalanced
        "rate(a[5 minutes])",  # not a duration
        "frobnicate(a)",  # unknown function
        "a b",  # two operands
        "a{x=1}",  # unquoted label value
        "a >",  # dangling operator
        "rate([5m])",  # range without selector
    ],
)
def test_the_checker_refuses_malformed_promql(expr: str) -> None:
    with pytest.raises(AssertionError):
        parse_promql(expr)


def test_exposed_names_handle_suffixes() -> None:
    names = exposed_names()
    assert "reauth_attempts_total" in names
    assert "reauth_attempts" not in names
    assert "reauth_mx_latency_seconds_bucket" in names
    assert "reauth_mx_latency_seconds" not in names
    assert "reauth_outbox_backlog" in names
    assert "reauth_funnel_events_total" in names


# --- the files ------------------------------------------------------------------------------------


def test_every_metric_the_dashboard_names_exists() -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    exposed = exposed_names()
    used = set().union(*(parse_promql(e) for e in exprs))
    assert used - exposed == set()
    for must in ("reauth_mx_paused", "reauth_outbox_dead", "reauth_reconnect_clicks_total",
                 "reauth_webhooks_received_total", "reauth_webhooks_applied_total",
                 "reauth_funnel_events_total", "reauth_mx_latency_seconds_bucket"):  # fmt: skip
        assert must in used, must


def test_dashboard_is_importable() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"]
    assert doc["title"]
    assert doc["schemaVersion"] >= 30
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        assert p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_alerts_are_well_formed_and_name_existing_metrics() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"}
    rules = _alerts()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    exposed = exposed_names()
    runbook = RUNBOOK.read_text()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(_DURATION, rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
        used = parse_promql(rule["expr"])
        assert used, rule["alert"]
        assert used - exposed == set(), rule["alert"]
        assert f"`{rule['alert']}`" in runbook, f"{rule['alert']} missing from RUNBOOK Alerts"
    for wanted in ("ReauthFleetPaused", "ReauthOutboxBacklogGrowing", "ReauthGaveUpSpike",
                   "ReauthWebhookRejects", "ReauthReconnectSuccessCollapsing"):  # fmt: skip
        assert wanted in names


# --- label values the code emits ---------------------------------------------------------------


def _matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, op, value) of every label matcher in ``expr``."""
    out = []
    for metric, body in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            out.append((metric, label, op, value))
    return out


def test_the_checker_reads_label_matchers() -> None:
    expr = 'sum(rate(a_total{stage="confirmed", outcome=~"x|y"}[5m])) / b{c!="d"}'
    assert _matchers(expr) == [
        ("a_total", "stage", "=", "confirmed"),
        ("a_total", "outcome", "=~", "x|y"),
        ("b", "c", "!=", "d"),
    ]


def test_funnel_stage_labels_are_stages_the_funnel_records() -> None:
    """A ``stage`` the dashboard or an alert asks for is a value of core.funnel.Stage, the one
    the funnel writes (a renamed stage would leave a panel empty and an alert silent)."""
    from worker.core.funnel import Stage

    stages = {s.value for s in Stage}
    exprs = _dashboard_exprs() + [rule["expr"] for rule in _alerts()]
    asked = [
        value
        for expr in exprs
        for metric, label, _op, values in _matchers(expr)
        if metric == "reauth_funnel_events_total" and label == "stage"
        for value in values.split("|")
    ]
    assert {"confirmed", "clicked"} <= set(asked)  # the success-rate alert
    assert set(asked) - stages == set()
