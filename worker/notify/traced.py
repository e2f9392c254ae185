"""A sink wrapped in a ``reauth.sink`` span per call (used by the runtime only when tracing is
on, so the relay and the sinks stay unaware of tracing)."""

from __future__ import annotations

from collections.abc import Sequence

from worker import tracing
from worker.notify.sinks import DeliveryResult, Message, Sink


class TracedSink:
    """``sink``, with a span per :meth:`deliver` (messages, sink name, failures)."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.name = sink.name

    def deliver(self, messages: Sequence[Message]) -> list[DeliveryResult]:
        with tracing.span(
            "reauth.sink", {"reauth.sink": self.name, "reauth.messages": len(messages)}
        ) as current:
            try:
                results = self._sink.deliver(messages)
            except Exception as exc:
                tracing.record_error(current, exc)
                raise
            if current is not None:
                current.set_attribute("reauth.failed", sum(1 for r in results if not r.delivered))
            return results

    def close(self) -> None:
        self._sink.close()
