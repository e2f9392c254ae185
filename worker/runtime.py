"""Per-process runtime: the long-lived things a worker process (or the CLI) shares.

One engine, one session factory, one event loop (an :class:`asyncio.Runner` kept open so the MX
client's connection pool and Redis connections survive between batches) and one MX client. Celery
prefork children build theirs lazily after the fork; nothing here is created at import time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from worker.config import Settings
from worker.db import make_engine, session_factory
from worker.policy import PolicyConfig

if TYPE_CHECKING:
    import httpx

    from worker.mx import MxClient

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (less CPU per MX call), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@dataclass
class Runtime:
    settings: Settings
    mx_transport: httpx.AsyncBaseTransport | None = None
    _engine: Engine | None = field(default=None, init=False, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, init=False, repr=False)
    _runner: asyncio.Runner | None = field(default=None, init=False, repr=False)
    _mx: MxClient | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def policy(self) -> PolicyConfig:
        return PolicyConfig.from_settings(self.settings)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = session_factory(self.engine)
        return self._sessions

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this process's long-lived event loop."""
        with self._lock:
            if self._runner is None:
                self._runner = asyncio.Runner(loop_factory=loop_factory())
            return self._runner.run(coro)

    @property
    def mx(self) -> MxClient:
        if self._mx is None:
            from worker.mx import build_mx_client

            self._mx = build_mx_client(self.settings, transport=self.mx_transport)
        return self._mx

    def close(self) -> None:
        """Close the MX client, the loop and the engine (idempotent)."""
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
