"""OpenTelemetry tracing: optional (``pip install reauth[otel]``), off unless
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

What it owns: the process's tracer (set up once at process start by the entry points: the
Celery worker's children, ``reauth beat``/``serve``/CLI commands), the maintained
instrumentations (Celery: context crosses task messages; SQLAlchemy: one span per statement on
the runtime's engine; httpx: the MX client and the webhook sink), and :func:`span`, the one
way the service opens its own spans:

``reauth.scan`` → ``reauth.regenerate`` (one per batch) → ``reauth.mx_call`` (one per member,
with the httpx span of the request under it) → ``reauth.write`` (the batch's transaction,
linked to every member's ``reauth.mx_call``: one transaction serves many members) →
``reauth.deliver`` (the relay) → ``reauth.relay`` (one per batch, linked to the MX call of
every member it delivers: the outbox row keeps that span's ``traceparent``, since a delivery often
runs in another trace, a sweep or the end of a grouping window) → ``reauth.sink`` (one per sink
call). A webhook starts at
``reauth.webhook.intake`` and goes on through ``reauth.apply_webhooks``.

Zero cost when off: nothing here imports opentelemetry until :func:`setup` finds an endpoint;
:func:`span` is then a no-op context manager. The standard ``OTEL_*`` variables configure the
exporter (endpoint, headers, ``OTEL_SERVICE_NAME``, sampling).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from worker.errors import ConfigError

if TYPE_CHECKING:
    import httpx
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer
    from sqlalchemy import Engine

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: Attribute values are cut to this length (an error message is not a document).
_MAX_ATTRIBUTE = 256

AttributeValue = str | int | float | bool | None


class _State:
    """The process's tracing set-up (one per process; None while tracing is off)."""

    provider: TracerProvider | None = None
    tracer: Tracer | None = None


_state = _State()


def enabled() -> bool:
    """Whether this process traces."""
    return _state.tracer is not None


def setup(service: str, *, exporter: SpanExporter | None = None) -> bool:
    """Start tracing in this process when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (or, for tests,
    an ``exporter`` is given); returns whether tracing is on. Idempotent.

    Call it at process start, after any fork (Celery prefork children each call it): the
    exporter's background thread does not survive a fork.
    """
    if _state.tracer is not None:
        return True
    if exporter is None and not os.environ.get(ENDPOINT_ENV):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"{ENDPOINT_ENV} is set but OpenTelemetry is not installed: "
            "install reauth[otel], or unset the variable"
        ) from exc
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        # Global as well, for libraries that ask the global provider (tests keep theirs local:
        # the global one can be set only once per process).
        trace.set_tracer_provider(provider)
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _state.provider = provider
    _state.tracer = provider.get_tracer("reauth")
    return True


def shutdown() -> None:
    """Flush and stop tracing (process exit; tests between runs)."""
    provider = _state.provider
    if provider is None:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
    provider.shutdown()
    _state.provider = _state.tracer = None


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    links: Sequence[SpanContext | None] = (),
) -> Iterator[Span | None]:
    """A span around the block, child of the current one, with ``links`` to other spans (a
    batch's transaction to each member's MX call); yields None when tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        yield None
        return
    from opentelemetry.trace import Link

    attrs = {
        k: (v[:_MAX_ATTRIBUTE] if isinstance(v, str) else v)
        for k, v in (attributes or {}).items()
        if v is not None
    }
    with tracer.start_as_current_span(
        name, attributes=attrs, links=[Link(c) for c in links if c is not None]
    ) as current:
        yield current


def current() -> SpanContext | None:
    """The current span's context (to link to it later), or None when not tracing."""
    if _state.tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def traceparent(context: SpanContext | None) -> str | None:
    """``context`` as a W3C ``traceparent`` value, to store with a row for a later span to link
    to (None when not tracing)."""
    if context is None:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def from_traceparent(value: str | None) -> SpanContext | None:
    """The span context a stored ``traceparent`` names (None when not tracing, or when the value
    is not one: a link is worth less than a delivery, so nothing here raises)."""
    if _state.tracer is None or not value:
        return None
    parts = value.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return context if context.is_valid else None


def instrument_engine(engine: Engine) -> None:
    """One span per SQL statement on ``engine`` (the maintained SQLAlchemy instrumentation,
    attached to this engine: ours is built before any global hook could see it)."""
    provider = _state.provider
    if provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter("reauth").create_up_down_counter("db.client.connections.usage")
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]


def instrument_transport(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """``transport`` wrapped so every request through it gets a client span (itself when
    tracing is off).

    The instrumentation's global hook patches ``httpx.AsyncHTTPTransport`` only; the MX client
    runs over an aiohttp-based transport (``worker.mx.transport``) and sends straight to it
    (no ``AsyncClient``), so the transport itself is wrapped.
    """
    if _state.provider is None:
        return transport
    from opentelemetry.instrumentation.httpx import AsyncOpenTelemetryTransport

    return AsyncOpenTelemetryTransport(transport, tracer_provider=_state.provider)


def record_error(current: Any, error: BaseException | None) -> None:
    """Mark ``current`` (from :func:`span`) failed with ``error``'s class (no message: it may
    carry member data)."""
    if current is None or error is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, type(error).__name__))
