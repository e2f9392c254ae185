"""The runtime: everything long-lived that one process shares, built once and closed once.

Every entry point builds one (a Celery worker process on its first task, each CLI command, the
demo, a test) and passes it down explicitly, like arq's ``ctx``: settings, the policy's knobs,
the database engine and session factory, one event loop (an :class:`asyncio.Runner` kept open so
the MX client's connection pool and Redis connections survive between batches), the MX client,
the notification sink, and the follow-up strategy that says how work is handed on (Celery
messages, or direct calls in this process). Nothing is created at import time and nothing is
swapped at run time: a test that wants inline follow-ups or a fake MX transport constructs the
runtime with them.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker import tracing
from worker.config import Settings
from worker.core.policy import PolicyConfig
from worker.store.db import make_engine, session_factory

if TYPE_CHECKING:
    import httpx

    from worker.app.followups import Followups
    from worker.mx import MxClient
    from worker.notify.sinks import Sink

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (less CPU per MX call), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


#: Collector thresholds of worker processes (CPython's default is 700, 10, 10). A batch makes
#: tens of thousands of short-lived objects (ORM rows, requests, responses) and almost no
#: cycles; at the default, generation 0 runs every few hundred allocations and full
#: collections walk every long-lived object (imports, SQLAlchemy's caches). Measured with
#: bench.profile_batch: with these and gc.freeze(), ~15-20% less CPU per member.
GC_THRESHOLDS = (10_000, 20, 20)


def tune_gc() -> None:
    """For a long-lived worker process, once it has imported what it runs: move everything
    alive now out of the collector's sight (``gc.freeze``: also keeps forked pool processes
    from touching, and so copying, the parent's pages) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class Runtime:
    """One process's shared resources. ``inline=True``: follow-ups run in this process."""

    settings: Settings
    mx_transport: httpx.AsyncBaseTransport | None = None
    inline: bool = False
    #: Ping pooled PostgreSQL connections only after this many idle seconds, not on every
    #: checkout (``reauth serve``: see store.db.make_engine). None: ping every checkout.
    ping_idle_after: float | None = None
    #: Pooled PostgreSQL connections kept open (None: SQLAlchemy's 5). ``reauth serve`` sizes it
    #: to its database threads (web.app.DB_THREADS).
    pool_size: int | None = None
    _engine: Engine | None = field(default=None, init=False, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, init=False, repr=False)
    _runner: asyncio.Runner | None = field(default=None, init=False, repr=False)
    _mx: MxClient | None = field(default=None, init=False, repr=False)
    _sink: Sink | None = field(default=None, init=False, repr=False)
    _followups: Followups | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @cached_property
    def policy(self) -> PolicyConfig:
        return PolicyConfig.from_settings(self.settings)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(
                self.settings.database_url,
                ping_idle_after=self.ping_idle_after,
                pool_size=self.pool_size,
            )
            tracing.instrument_engine(self._engine)  # no-op unless tracing is on
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = session_factory(self.engine)
            from worker import metrics
            from worker.store import funnel

            # Counted once the transaction that recorded the events has committed.
            funnel.on_commit(self._sessions, metrics.count_funnel)
        return self._sessions

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this process's long-lived event loop."""
        with self._lock:
            if self._runner is None:
                self._runner = asyncio.Runner(loop_factory=loop_factory())
            # The caller's context, not the one the runner captured on its first run: a span (or
            # log context) current here must be the coroutine's, not the first task's.
            return self._runner.run(coro, context=contextvars.copy_context())

    @property
    def mx(self) -> MxClient:
        if self._mx is None:
            from worker.mx import build_mx_client

            self._mx = build_mx_client(self.settings, transport=self.mx_transport)
        return self._mx

    @property
    def sink(self) -> Sink:
        """Where the relay delivers (it holds connections, so one per runtime)."""
        if self._sink is None:
            from worker.notify.sinks import build_sink

            self._sink = build_sink(self.settings)
            if tracing.enabled():
                from worker.notify.traced import TracedSink

                self._sink = TracedSink(self._sink)
        return self._sink

    @property
    def handoff_lease(self) -> timedelta:
        """The lease of members claimed for a batch that is handed on: queued Celery messages
        wait unrenewed (REAUTH_CLAIM_QUEUED_LEASE); inline batches start at once."""
        return self.settings.claim_lease if self.inline else self.settings.claim_queued_lease

    @property
    def followups(self) -> Followups:
        """How a finished step hands work on: Celery messages, or direct calls when inline."""
        if self._followups is None:
            from worker.app.followups import CeleryFollowups, InlineFollowups

            self._followups = InlineFollowups(self) if self.inline else CeleryFollowups(self)
        return self._followups

    async def aclose_mx(self) -> None:
        """Close the MX client on the event loop it ran on (a web server's, at shutdown)."""
        if self._mx is not None:
            await self._mx.aclose()
            self._mx = None

    def close(self) -> None:
        """Close the sink, follow-ups, MX client, loop and engine (idempotent)."""
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._followups is not None:
            self._followups.close()
            self._followups = None
        if self._mx is not None and self._runner is not None:
            self.run(self._mx.aclose())
        self._mx = None
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None
