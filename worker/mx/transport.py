"""The HTTP transport under httpx, and the translation of transport failures into the tree.

Transport choice (measured in ``bench/client_bench.py``, figures in ``bench/README.md``):
httpx stays the API (MockTransport seams, one request model), but requests travel over
``httpx_aiohttp.AiohttpTransport``. httpx's default async transport (httpcore's connection
pool) stops scaling once a few dozen requests are in flight (the issue measured 83 req/s with 64
in flight against a 100 ms server; upstream: encode/httpx#3215, still open), while aiohttp's
connector keeps scaling to hundreds in flight. We run up to ``REAUTH_MX_MAX_CONCURRENCY``
(default 64) concurrent MX calls per process, right where the default transport falls over.

httpx_aiohttp maps aiohttp's exceptions imperfectly (a peer reset arrives as
``httpx.ConnectTimeout``, and some aiohttp errors are not mapped at all), so
:func:`translate_error` looks at the whole exception chain, not only at the outer httpx class.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from worker.errors import BadResponse, MxConnectionError, MxError, MxTimeout

#: Extra pooled connections beyond the concurrency cap (SSO and Nexus are different hosts).
POOL_HEADROOM = 8


def build_transport(max_concurrency: int) -> httpx.AsyncBaseTransport:
    """The production transport: aiohttp under httpx (see the module docstring for why).

    The aiohttp session inside is created lazily on the first request, on the running loop,
    and closed by ``httpx.AsyncClient.aclose()``.
    """
    limits = httpx.Limits(
        max_connections=max_concurrency + POOL_HEADROOM,
        max_keepalive_connections=max_concurrency + POOL_HEADROOM,
        keepalive_expiry=30.0,
    )
    return _NoRetryAiohttpTransport(limits=limits)


class _NoRetryAiohttpTransport(AiohttpTransport):
    """``AiohttpTransport`` whose aiohttp session never re-sends a request by itself.

    aiohttp silently sends an idempotent request a second time when a reused keep-alive
    connection drops (``ServerDisconnectedError``/``ClientOSError``). That hidden retry takes no
    rate-limit slot and skips the backoff: tests/reliability/test_mx_chaos.py saw 18 of 21
    injected connection resets re-sent within 10 ms. Retrying is the pipeline's decision, so
    the failure surfaces as ``MxConnectionError`` instead. aiohttp has no public switch for
    this; ``_retry_connection`` is the flag its ``_request`` reads (aiohttp 3.9 to 3.14).
    """

    def get_client(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = super().get_client()
        session._retry_connection = False
        return session


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_real_timeout(chain: list[BaseException]) -> bool:
    # aiohttp.ServerTimeoutError subclasses TimeoutError; a disconnect does not.
    return any(isinstance(e, TimeoutError | httpx.TimeoutException) for e in chain) and not any(
        isinstance(e, aiohttp.ClientConnectionError) and not isinstance(e, TimeoutError)
        for e in chain
    )


def translate_error(exc: BaseException, what: str) -> MxError:
    """The tree's error for a failure raised while talking to MX. Never raises.

    Messages carry the call name and the exception class only: library messages can include
    URLs and, for some libraries, header dumps.
    """
    if isinstance(exc, MxError):
        return exc
    name = exc.__class__.__name__
    chain = _chain(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | httpx.TimeoutException):
        if _is_real_timeout(chain):
            return MxTimeout(f"{what}: timed out ({name})")
        return MxConnectionError(f"{what}: connection failed ({name})")
    if isinstance(exc, httpx.TransportError | aiohttp.ClientConnectionError | OSError):
        return MxConnectionError(f"{what}: connection failed ({name})")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return MxConnectionError(f"{what}: body cut short ({name})")
    if isinstance(exc, httpx.DecodingError | httpx.StreamError | aiohttp.ClientResponseError):
        return BadResponse(f"{what}: unreadable answer ({name})")
    return MxConnectionError(f"{what}: unexpected transport failure ({name})")
