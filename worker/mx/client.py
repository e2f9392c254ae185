"""The MX client: one call, ``generate_oauth_window_uri``, over the Nexus or the Platform API.

It owns the HTTP boundary to MX: concurrency cap, global rate limit, Nexus sessions, the body
size cap, and the translation of every failure into :mod:`worker.errors` (only ``MxError``
subclasses leave this module, plus ``ValueError`` for a request that breaks the redirect rules,
which is a programming error). Retrying transient errors is the caller's policy, except the one
Nexus session refresh on 401/4011, which is part of talking to Nexus at all.

Event loops: resources bound to a loop (the aiohttp session under httpx, Redis connections, the
semaphore) are created lazily on the loop of the first call and released by :meth:`aclose`.
One client therefore serves many batches on a long-lived loop (``asyncio.Runner.run`` per
Celery batch), or lives and dies inside one ``asyncio.run``. After ``aclose`` the client may be
used again (on any loop); using it from a *second* loop without closing it first is a
programming error and raises ``RuntimeError``, because the first loop's sockets cannot be
closed from the second.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import httpx
import redis.asyncio as aioredis
import structlog

from worker.clock import utc_now
from worker.config import MxApi, Settings, redirect_allowed
from worker.errors import BadResponse, MxError, MxForbidden, MxUnauthorized
from worker.logging import fingerprint_uri, register_secret
from worker.mx import params as P
from worker.mx.ratelimit import KEY_PREFIX, LocalRateLimiter, RateLimiter, RedisRateLimiter
from worker.mx.responses import (
    BodyTooLarge,
    body_document,
    decode_success,
    error_for,
    is_session_expired,
    parse_retry_after,
    read_capped,
    require_str,
)
from worker.mx.sessions import (
    NEXUS_SESSION_TTL,
    MemorySessionStore,
    RedisSessionStore,
    SessionManager,
    SessionStore,
)
from worker.mx.transport import build_transport, translate_error
from worker.mx.types import OAuthRequest, OAuthWindow

log = structlog.get_logger(__name__)

#: Sent on every request: we read raw bytes under a cap, so compressed bodies are refused.
_COMMON_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "reauth-worker"}


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: httpx.Headers

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def doc(self) -> Any:
        return body_document(self.body)


@dataclass
class _LoopState:
    """Everything bound to one event loop."""

    loop: asyncio.AbstractEventLoop
    http: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    limiter: RateLimiter
    sessions: SessionManager
    redis: aioredis.Redis | None


class MxClient:
    """Asks MX for fresh OAuth window URIs. Build it with :func:`build_mx_client`."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._api = MxApi(settings.mx_api)
        self._api_key = settings.mx_api_key.get_secret_value()
        self._client_id = settings.mx_client_id
        self._cap = settings.mx_max_body_bytes
        self._timeout = settings.mx_timeout
        self._session_ttl = NEXUS_SESSION_TTL - settings.mx_session_margin
        if self._session_ttl <= timedelta(0):
            raise ValueError("REAUTH_MX_SESSION_MARGIN must be shorter than 30 minutes")
        self._state: _LoopState | None = None

    def __repr__(self) -> str:
        return f"MxClient(api={self._api.value}, base_url={self._settings.mx_base_url!r})"

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close connections on the current loop. Safe to call twice; the client stays usable."""
        state, self._state = self._state, None
        if state is None:
            return
        if state.loop is not asyncio.get_running_loop():
            raise RuntimeError("MxClient.aclose() must run on the loop the client was used on")
        try:
            await state.http.aclose()
        finally:
            if state.redis is not None:
                await state.redis.aclose()

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None:
            state = self._state = self._build_state(loop)
        elif state.loop is not loop:
            raise RuntimeError(
                "MxClient is bound to the event loop it first ran on; aclose() it there, or "
                "build one client per loop (asyncio.Runner keeps one loop across batches)"
            )
        return state

    def _build_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        s = self._settings
        transport = self._transport or build_transport(s.mx_max_concurrency)
        http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(s.mx_timeout),
            follow_redirects=False,
            headers=_COMMON_HEADERS,
            trust_env=False,
        )
        redis: aioredis.Redis | None = None
        limiter: RateLimiter
        store: SessionStore
        namespace = self._client_id or "default"
        if s.redis_url:
            # A blocking pool: callers beyond the pool size wait for a connection instead of
            # failing (redis-py's default pool raises MaxConnectionsError past 100). Every
            # caller not yet holding the semaphore may read the session cache, so allow more
            # connections than in-flight HTTP requests.
            pool = aioredis.BlockingConnectionPool.from_url(
                s.redis_url,
                max_connections=2 * s.mx_max_concurrency + 16,
                timeout=s.mx_timeout,
                socket_timeout=5.0,
                socket_connect_timeout=5.0,
            )
            redis = aioredis.Redis.from_pool(pool)  # from_pool: aclose() closes the pool
            limiter = RedisRateLimiter(
                redis,
                s.mx_rate_limit_per_second,
                key=f"{KEY_PREFIX}{namespace}",
                max_wait=s.mx_timeout,  # no caller waits longer for a slot than for an answer
            )
            store = RedisSessionStore(redis, self._session_ttl, namespace=namespace)
        else:
            limiter = LocalRateLimiter(s.mx_rate_limit_per_second, max_wait=s.mx_timeout)
            store = MemorySessionStore(self._session_ttl, self._clock)
        # The creation lock must outlive a creation: two MX requests, each bounded by timeout.
        lock_ttl = timedelta(seconds=4 * s.mx_timeout + 5)
        return _LoopState(
            loop=loop,
            http=http,
            semaphore=asyncio.Semaphore(s.mx_max_concurrency),
            limiter=limiter,
            sessions=SessionManager(store, lock_ttl=lock_ttl),
            redis=redis,
        )

    # --- the one call --------------------------------------------------------------------------
    async def generate_oauth_window_uri(self, request: OAuthRequest) -> OAuthWindow:
        """A fresh one-time OAuth window URI for ``request.member_guid``.

        Raises:
            NotOAuthCapable, MemberNotFound, MxBadRequest: permanent, the member's problem.
            MxUnauthorized, MxForbidden: our credentials/IP/feature; stop and alert.
            RateLimited, ServerError, MxTimeout, MxConnectionError, BadResponse: transient.
            ValueError: ``client_redirect_url`` is not under REAUTH_ALLOWED_REDIRECT_PREFIXES.
        """
        self._check_redirect(request)
        state = self._loop_state()
        if self._api is MxApi.PLATFORM:
            window = await self._platform(state, request)
        else:
            window = await self._nexus(state, request)
        log.debug(
            "mx.oauth_window",
            member_guid=request.member_guid,
            mx_member_guid=window.member_guid,
            uri_fingerprint=fingerprint_uri(window.oauth_window_uri),
        )
        return window

    def _check_redirect(self, request: OAuthRequest) -> None:
        url = request.client_redirect_url
        if url is not None and not redirect_allowed(url, self._settings.allowed_redirect_prefixes):
            raise ValueError(
                "client_redirect_url is not under any prefix in REAUTH_ALLOWED_REDIRECT_PREFIXES"
            )

    # --- Platform ------------------------------------------------------------------------------
    async def _platform(self, state: _LoopState, request: OAuthRequest) -> OAuthWindow:
        what = f"Platform oauth_window_uri {request.member_guid}"
        basic = base64.b64encode(f"{self._client_id}:{self._api_key}".encode()).decode()
        answer = await self._exchange(
            state,
            "GET",
            self._settings.mx_base_url
            + P.platform_oauth_path(request.user_guid, request.member_guid),
            headers={"Authorization": f"Basic {basic}", "Accept": P.PLATFORM_MEDIA_TYPE},
            params=query_params(request, MxApi.PLATFORM),
            what=what,
        )
        return self._window(answer, what)

    # --- Nexus ---------------------------------------------------------------------------------
    async def _nexus(self, state: _LoopState, request: OAuthRequest) -> OAuthWindow:
        what = f"Nexus oauth_window_uri {request.member_guid}"
        user = request.sso_user_id

        async def create() -> str:
            return await self._create_session(state, user)

        token = await state.sessions.token_for(user, create)
        answer = await self._nexus_call(state, request, token, what)
        if not answer.ok and is_session_expired(answer.status, answer.doc):
            # MX expired the session (or never had it): one fresh session, one retry.
            log.debug("mx.session_refresh", mx_user=user, status=answer.status)
            await state.sessions.drop(user, token)
            token = await state.sessions.token_for(user, create)
            answer = await self._nexus_call(state, request, token, what)
            if not answer.ok and is_session_expired(answer.status, answer.doc):
                await state.sessions.drop(user, token)
                raise MxUnauthorized(
                    f"{what}: {answer.status} even with a fresh session", status=answer.status
                )
        return self._window(answer, what)

    async def _nexus_call(
        self, state: _LoopState, request: OAuthRequest, token: str, what: str
    ) -> _Answer:
        return await self._exchange(
            state,
            "GET",
            self._settings.mx_base_url + P.nexus_oauth_path(request.member_guid),
            headers={
                P.HEADER_SESSION_TOKEN: token,
                "Accept": P.NEXUS_MEDIA_TYPE,
                "Content-Type": P.NEXUS_MEDIA_TYPE,
            },
            params=query_params(request, MxApi.NEXUS),
            what=what,
        )

    async def _create_session(self, state: _LoopState, user: str) -> str:
        """SSO API token (one-time, 10 min) exchanged for a Nexus session token."""
        what = "SSO api_token"
        answer = await self._exchange(
            state,
            "GET",
            self._settings.mx_sso_base_url + P.sso_token_path(self._client_id, user),
            headers={P.HEADER_API_KEY: self._api_key, "Accept": P.SSO_MEDIA_TYPE},
            what=what,
        )
        self._raise_for_session_step(answer, what)
        api_token = require_str(
            decode_success(answer.status, answer.body, what=what),
            "api_token",
            "token",
            what=what,
            status=answer.status,
        )
        what = "Nexus POST /sessions"
        answer = await self._exchange(
            state,
            "POST",
            self._settings.mx_base_url + P.NEXUS_SESSIONS_PATH,
            headers={
                P.HEADER_API_TOKEN: api_token,
                "Accept": P.NEXUS_MEDIA_TYPE,
                "Content-Type": P.NEXUS_MEDIA_TYPE,
            },
            what=what,
        )
        self._raise_for_session_step(answer, what)
        return require_str(
            decode_success(answer.status, answer.body, what=what),
            "session",
            "token",
            what=what,
            status=answer.status,
        )

    def _raise_for_session_step(self, answer: _Answer, what: str) -> None:
        if answer.ok:
            return
        if answer.status == 404:
            # MX documents 404 on the SSO token read as "Nexus not enabled for this client".
            # Nothing about the member is involved, so this must stop the line, never mark
            # members as gone.
            raise MxForbidden(
                f"{what}: 404: Nexus not enabled for this client id, or wrong base URL",
                status=404,
            )
        raise self._error(answer, what)

    # --- shared --------------------------------------------------------------------------------
    def _error(self, answer: _Answer, what: str) -> MxError:
        retry_after = parse_retry_after(answer.headers.get("retry-after"), self._clock)
        return error_for(answer.status, answer.doc, what=what, retry_after=retry_after)

    def _window(self, answer: _Answer, what: str) -> OAuthWindow:
        if not answer.ok:
            raise self._error(answer, what)
        doc = decode_success(answer.status, answer.body, what=what)
        guid = require_str(doc, "member", "guid", what=what, status=answer.status)
        uri = require_str(doc, "member", "oauth_window_uri", what=what, status=answer.status)
        if not uri.startswith(("https://", "http://")):
            raise BadResponse(f"{what}: oauth_window_uri is not an http(s) URL", status=200)
        return OAuthWindow(member_guid=guid, oauth_window_uri=uri, generated_at=self._clock())

    async def _exchange(
        self,
        state: _LoopState,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        what: str,
        params: dict[str, str] | None = None,
    ) -> _Answer:
        """One HTTP request under the concurrency cap and the rate limit; body read capped.

        Raises only :class:`MxError` subclasses (transport failures, oversized bodies, no
        rate-limit slot within the timeout).
        """
        async with state.semaphore:
            # The rate-limit slot is taken only once we may send, right before sending (see
            # worker.mx.ratelimit for why a slot taken earlier could break the global rate).
            await state.limiter.acquire()
            started = time.perf_counter()
            status = 0
            try:
                async with asyncio.timeout(self._timeout):
                    # A plain Request with the query pre-encoded costs about half of
                    # client.build_request(params=...); the client's default headers and
                    # timeouts are carried over explicitly.
                    request = httpx.Request(
                        method,
                        f"{url}?{urlencode(params)}" if params else url,
                        headers={**_COMMON_HEADERS, **headers},
                        extensions={"timeout": state.http.timeout.as_dict()},
                    )
                    response = await state.http.send(request, stream=True)
                    status = response.status_code
                    try:
                        body = await read_capped(response, self._cap)
                    finally:
                        await response.aclose()
            except BodyTooLarge:
                raise BadResponse(
                    f"{what}: {status} answer larger than {self._cap} bytes", status=status
                ) from None
            except Exception as exc:
                error = translate_error(exc, what)
                log.debug("mx.http_failed", call=what, error=error.__class__.__name__)
                raise error from exc
        log.debug(
            "mx.http",
            call=what,
            status=status,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return _Answer(status=status, body=body, headers=response.headers)


def query_params(request: OAuthRequest, api: MxApi) -> dict[str, str]:
    """The query string for the OAuth window call (names chosen in :mod:`worker.mx.params`).

    ``client_redirect_url`` only ever goes out with APP (``OAuthRequest`` refuses it with
    BROWSER). The Platform API documents ``ui_message_webview_url_scheme`` for APP only, so it
    is left out of Platform BROWSER requests; Nexus's own example URI carries it with BROWSER.
    """
    out = {
        P.Q_REFERRAL_SOURCE: request.referral_source,
        P.Q_SKIP_AGGREGATION: "true" if request.skip_aggregation else "false",
    }
    if request.client_redirect_url is not None and request.referral_source == P.REFERRAL_APP:
        out[P.Q_CLIENT_REDIRECT_URL] = request.client_redirect_url
    scheme = request.ui_message_webview_url_scheme
    if scheme is not None and (api is MxApi.NEXUS or request.referral_source == P.REFERRAL_APP):
        out[P.Q_UI_MESSAGE_SCHEME] = scheme
    return out


def build_mx_client(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> MxClient:
    """The MX client for ``settings`` (``REAUTH_MX_*``; Redis shared state when
    ``REAUTH_REDIS_URL`` is set). ``transport`` replaces the network (tests); ``clock`` stamps
    ``generated_at`` and times the in-process session cache.
    """
    register_secret(settings.mx_api_key.get_secret_value())
    return MxClient(settings, transport=transport, clock=clock)
