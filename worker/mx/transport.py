"""The HTTP transport under httpx, and the translation of transport failures into the tree.

Transport choice (measured in ``bench/client_bench.py``, figures in ``bench/README.md``):
httpx stays the API (MockTransport seams, one request model), but requests travel over
``httpx_aiohttp.AiohttpTransport``. httpx's default async transport (httpcore's connection
pool) stops scaling once a few dozen requests are in flight (the issue measured 83 req/s with 64
in flight against a 100 ms server; upstream: encode/httpx#3215, still open), while aiohttp's
connector keeps scaling to hundreds in flight. We run up to ``REAUTH_MX_MAX_CONCURRENCY``
(default 64) concurrent MX calls per process, right where the default transport falls over.

Per request the transport does only what our calls need (measured against a bare aiohttp loop
in ``bench/client_bench.py``): the URL goes to aiohttp as already encoded (httpx has parsed and
quoted it; re-parsing it in yarl costs as much again), headers are handed over as plain
strings without httpx's per-item encoding detection, the aiohttp timeout object is built once
per distinct timeout, and the body is streamed so the caller's size cap holds.

httpx_aiohttp maps aiohttp's exceptions imperfectly (a peer reset arrives as
``httpx.ConnectTimeout``, and some aiohttp errors are not mapped at all), so
:func:`translate_error` looks at the whole exception chain, not only at the outer httpx class.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: One aiohttp.ClientTimeout per distinct (connect, read, pool): built once, not per call.
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """``AiohttpTransport.handle_async_request`` without its per-request overheads.

        Same aiohttp call (no redirects, no decompression, the request's connect/read/pool
        timeouts), same exception mapping, same streamed response. Differences: the body is
        bytes only (our calls never stream one), no proxy or SNI extensions (never set here).
        """
        client = self.client
        if not isinstance(client, aiohttp.ClientSession):
            client = self.client = self.get_client()
        timeout = request.extensions.get("timeout") or {}
        key = (timeout.get("connect"), timeout.get("read"), timeout.get("pool"))
        client_timeout = self._timeouts.get(key)
        if client_timeout is None:
            client_timeout = self._timeouts[key] = _client_timeout(key)
        # httpx has already validated and percent-encoded the URL: tell yarl not to redo it.
        url = yarl.URL(str(request.url), encoded=True)
        # Header names and values are latin-1 byte strings in httpx; aiohttp wants str.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw}
        with map_aiohttp_exceptions():
            response = await client.request(
                request.method,
                url,
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=client_timeout,
            ).__aenter__()
        answer = httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_CappedStream(response),
            request=request,
            extensions=_HTTP11,
        )
        # Header bytes as received are read as latin-1 (what HTTP/1.1 allows on the wire):
        # httpx would otherwise try ascii then utf-8 over every header on each lookup.
        answer.headers.encoding = "latin-1"
        return answer


_HTTP11 = {"http_version": b"HTTP/1.1"}


class _CappedStream(AiohttpResponseStream):
    """The aiohttp body stream, plus a capped read straight from aiohttp's buffer.

    :func:`worker.mx.responses.read_capped` uses :meth:`read_capped` when present: the same
    bytes and the same cap as iterating the stream, without httpx's per-chunk layers.
    """

    async def read_capped(self, limit: int) -> bytes | None:
        """The whole body, or ``None`` once it exceeds ``limit`` bytes (the rest unread)."""
        content = self._aiohttp_response.content
        chunks: list[bytes] = []
        size = 0
        with map_aiohttp_exceptions():
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: A path and query httpx would leave exactly as they are: unreserved characters, the
#: sub-delimiters and separators our calls use, and complete percent escapes. Anything else
#: (spaces, non-ASCII, a bare "%", "#") takes httpx's full parse and quoting.
_CANONICAL = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_origins: dict[str, httpx.URL] = {}
_ORIGINS_MAX = 64


def request_url(url: str) -> httpx.URL:
    """``httpx.URL(url)`` for an absolute URL, without re-parsing what repeats on every call.

    httpx parses and re-quotes every URL character by character; our calls differ only in a
    path and query that :mod:`worker.mx.params` and ``urlencode`` have already encoded. So the
    origin (scheme, host, port) is parsed once and kept, and a path + query that httpx would
    leave unchanged (:data:`_CANONICAL`) is attached as is. The result equals
    ``httpx.URL(url)`` (tests/mx/test_transport_fast_path.py); any other URL is parsed by
    httpx as usual. Relies on httpx's ``_uri_reference`` (a NamedTuple; httpx is pinned in
    uv.lock, and the test fails loudly if it changes).
    """
    scheme_end = url.find("://")
    slash = url.find("/", scheme_end + 3) if scheme_end > 0 else -1
    if slash < 0:
        return httpx.URL(url)
    rest = url[slash:]
    if "#" in rest or _CANONICAL.fullmatch(rest) is None:
        return httpx.URL(url)
    origin = _origins.get(url[:slash])
    if origin is None:
        origin = httpx.URL(url[:slash])
        if len(_origins) < _ORIGINS_MAX:
            _origins[url[:slash]] = origin
    path, sep, query = rest.partition("?")
    fast = httpx.URL.__new__(httpx.URL)
    fast._uri_reference = origin._uri_reference._replace(
        path=path, query=query if sep else None, fragment=None
    )
    return fast


def _client_timeout(key: tuple[Any, ...]) -> aiohttp.ClientTimeout:
    connect, read, pool = key
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


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
