"""The options every Redis client this service builds shares (sync and asyncio alike).

redis-py 8 builds a :class:`~redis.driver_info.DriverInfo` for each new *connection* (what
``CLIENT SETINFO`` reports), and without one passed in it reads its own version from the
installed package's metadata every time: a scan of site-packages and an e-mail-header parse,
milliseconds each. A connection pool that grows under a burst (the MX client's, up to twice the
in-flight cap) paid it per connection: 22% of a pool process's CPU during the webhook
benchmark's burst (py-spy). Computed once per process here, and ``CLIENT SETINFO`` still names
the library and its version.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def driver_info() -> Any:
    """The process's one :class:`~redis.driver_info.DriverInfo` (built on first use)."""
    from redis.driver_info import DriverInfo

    return DriverInfo()


def client_options() -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url`` / ``ConnectionPool.from_url``."""
    return {"driver_info": driver_info()}
