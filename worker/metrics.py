"""Prometheus metrics of the worker (served on REAUTH_METRICS_PORT when set).

Celery prefork children are separate processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set,
prometheus-client's multiprocess mode aggregates them and the parent serves the sum; otherwise
each process serves only its own figures. Gauges that describe the fleet (backlog, dead, gave
up, MX pause) are set by whichever process read them last, so they aggregate as
``mostrecent``: a child that set a high value and then died must not hold the figure up (which
``max`` would). ``reauth serve`` serves its own registry, or with ``--workers N`` its
processes' sum the same way.

No metric has a per-member or per-institution label (cardinality): the worst institutions come
from SQL (``reauth report``), not from Prometheus. docs/OBSERVABILITY.md lists every metric.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: MX calls by outcome (success, transient, not_oauth_capable, ...).
ATTEMPTS = Counter("reauth_attempts_total", "MX oauth_window_uri calls by outcome", ["outcome"])
#: MX call latency.
MX_LATENCY = Histogram(
    "reauth_mx_latency_seconds",
    "Latency of MX oauth_window_uri calls",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: oauth_window_uris refused before anyone saw them, by rule (userinfo, scheme, host, ...).
MX_URI_REFUSED = Counter(
    "reauth_mx_uri_refused_total", "oauth_window_uris refused by the URI checks", ["reason"]
)
#: Accepted oauth_window_uris whose host is outside MX's domains (REAUTH_MX_URI_HOSTS unset).
MX_URI_UNKNOWN_HOST = Counter(
    "reauth_mx_uri_unknown_host_total",
    "Accepted oauth_window_uris whose host is not an MX domain (no allow-list set)",
)
#: Members due at the start of the last scan.
MEMBERS_DUE = Gauge("reauth_members_due", "Members due at the last scan", multiprocess_mode="max")
#: Outbox rows not yet delivered.
OUTBOX_BACKLOG = Gauge(
    "reauth_outbox_backlog", "Pending notifications in the outbox", multiprocess_mode="mostrecent"
)
#: Outbox rows that gave up (the sink refused them or stayed down); set by each scan.
OUTBOX_DEAD = Gauge(
    "reauth_outbox_dead", "Dead notifications in the outbox", multiprocess_mode="mostrecent"
)
#: Members whose episode gave up (attempt budget spent); set by each scan.
MEMBERS_GAVE_UP = Gauge(
    "reauth_members_gave_up", "Members in state gave_up", multiprocess_mode="mostrecent"
)
#: 1 while every MX call is paused fleet-wide after a configuration error, else 0. Set by each
#: scan (which reads the pause) and at once by the batch that pauses. The reason is free text
#: (an exception message), so it is not a label: ``reauth status`` shows it.
MX_PAUSED = Gauge(
    "reauth_mx_paused", "1 while MX calls are paused fleet-wide", multiprocess_mode="mostrecent"
)
#: Scan duration.
SCAN_DURATION = Histogram("reauth_scan_duration_seconds", "Duration of scans")
#: Notifications delivered, retried or dead.
NOTIFICATIONS = Counter("reauth_notifications_total", "Outbox deliveries by result", ["result"])

#: Presses of Reconnect on the reconnect pages, by what was decided: minted (303 to MX), closed
#: (episode already over), rate_limited (click limit), mx_error (MX failed), expired (token too
#: old), not_found (unknown or invalid token), forbidden (not from our page).
RECONNECT_CLICKS = Counter(
    "reauth_reconnect_clicks_total", "Reconnect presses by outcome", ["outcome"]
)

#: MX webhooks received, by type and outcome (pending, duplicate, rejected, ignored,
#: unauthorized, forbidden, too_large).
WEBHOOKS_RECEIVED = Counter(
    "reauth_webhooks_received_total", "MX webhooks received", ["type", "outcome"]
)
#: Webhook events applied, by result (applied, ignored, retried, failed).
WEBHOOKS_APPLIED = Counter("reauth_webhooks_applied_total", "MX webhook events applied", ["result"])

#: Funnel events (docs/FUNNEL.md), counted after the transaction recording them commits. No
#: institution label (cardinality): the worst institutions come from `reauth report`.
FUNNEL_EVENTS = Counter(
    "reauth_funnel_events_total", "Funnel events recorded, by stage", ["stage", "reason", "channel"]
)


def count_funnel(recorded: list[tuple[str, str, str]]) -> None:
    """Count committed funnel events: (stage, reason, channel) triples."""
    for stage, reason, channel in recorded:
        FUNNEL_EVENTS.labels(stage=stage, reason=reason, channel=channel).inc()


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 picks none)."""
    if not port:
        return
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, registry=registry)
    else:
        start_http_server(port)
