"""The MX client: fresh OAuth window URIs and members' live state, over Nexus or Platform.

It owns the HTTP boundary to MX: concurrency cap, global rate limit, Nexus sessions, the body
size cap, the checks on the URI MX answers (:mod:`worker.mx.uri`), and the translation of every
failure into :mod:`worker.errors` (only ``MxError`` subclasses leave this module, plus
``ValueError`` for a request that breaks the redirect rules, a programming error). What differs
between API versions (paths, headers, query parameters, how answers are read) comes from a
dialect (:mod:`worker.mx.api`). Retrying transient errors is the caller's policy, except Nexus
session refreshes, which are part of talking to Nexus at all.

What stops the fleet (an :class:`~worker.errors.MxConfigurationError`) is decided here and in
:mod:`worker.mx.health`, on evidence about the client only: 405/406/415 at once; credential
refusals (SSO 401/403/404, Platform 401/403, Nexus 403) once enough distinct users get them
with no success in between. A Nexus 401/4011 always means "get a new session": refreshed
single-flight per user, at most :data:`SESSION_TRIES` times per call, then a transient
:class:`~worker.errors.SessionExpired`.

Requests are ``httpx.Request`` objects handed straight to the transport
(``handle_async_request``), not through ``httpx.AsyncClient.send``: the hot path needs none of
what the client adds per request (auth flows, cookies, event hooks, redirects, base URL
merging), and each costs CPU on every call. What it would have supplied is built here once:
absolute URLs, the common headers, the timeout extension.

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
from typing import Any, NoReturn, Self
from urllib.parse import urlencode

import httpx
import redis.asyncio as aioredis
import structlog

from worker import metrics, tracing, waits
from worker.clock import utc_now
from worker.config import Settings, insecure_mx_url, redirect_allowed
from worker.errors import (
    BadResponse,
    BlankOAuthUri,
    ConfigError,
    MxError,
    MxForbidden,
    MxUnauthorized,
    NexusNotEnabled,
    SessionExpired,
    UnsafeOAuthUri,
    UserNotFound,
    UserRefused,
)
from worker.logging import fingerprint_uri, register_secret
from worker.mx import params as P
from worker.mx.api import Auth, Call, Dialect, NexusDialect, SessionFlow, dialect_for
from worker.mx.health import (
    HOLD_SECONDS,
    SCOPE_NEXUS,
    SCOPE_SSO,
    CredentialHealth,
    MemoryTally,
    RedisTally,
)
from worker.mx.ratelimit import (
    KEY_PREFIX,
    LocalRateLimiter,
    Permit,
    RateLimiter,
    RedisRateLimiter,
)
from worker.mx.responses import (
    BodyTooLarge,
    body_document,
    decode_success,
    error_for,
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
from worker.mx.transport import build_transport, request_url, translate_error
from worker.mx.types import MemberRequest, MemberState, OAuthRequest, OAuthWindow
from worker.mx.uri import UriRules, check_uri
from worker.redis_options import client_options

log = structlog.get_logger(__name__)

#: Sent on every request: we read raw bytes under a cap, so compressed bodies are refused.
_COMMON_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "reauth-worker"}
#: Calls per Nexus request at most: the first plus three with a refreshed session. Sessions that
#: MX expires while many of one user's calls are in flight can each cost a call a retry.
SESSION_TRIES = 4
#: Statuses that refuse our credentials or access, for one user or for the whole client.
_REFUSALS = frozenset({401, 403})
#: Every request carries an empty body (GETs, and the session POST).
_EMPTY_BODY = httpx.ByteStream(b"")
#: Distinct query strings and header shapes kept per client (calls repeat a handful of each).
_CACHE_MAX = 256
#: Unknown URI hosts logged at WARNING once per process each (then DEBUG); bounded memory.
_UNKNOWN_HOSTS_LOGGED_MAX = 1000


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
    transport: httpx.AsyncBaseTransport
    semaphore: asyncio.Semaphore
    limiter: RateLimiter
    sessions: SessionManager
    health: CredentialHealth
    redis: aioredis.Redis | None


class MxClient:
    """Talks to MX for the pipeline. Build it with :func:`build_mx_client`."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        problem = insecure_mx_url(settings)
        if problem is not None:
            # Settings validate this too; model_copy(update=...) skips validation.
            raise ConfigError(problem)
        self._settings = settings
        self._transport = transport
        self._clock = clock
        self._dialect: Dialect = dialect_for(settings)
        self._api_key = settings.mx_api_key.get_secret_value()
        self._client_id = settings.mx_client_id
        basic = base64.b64encode(f"{self._client_id}:{self._api_key}".encode()).decode()
        self._basic = f"Basic {basic}"
        self._cap = settings.mx_max_body_bytes
        self._timeout = settings.mx_timeout
        # The per-request timeout extension the transport reads (connect, read, write, pool).
        self._timeout_ext = httpx.Timeout(settings.mx_timeout).as_dict()
        self._uri_rules = UriRules(
            allow_insecure=settings.allow_insecure_urls,
            allowed_hosts=tuple(settings.mx_uri_hosts),
        )
        self._session_ttl = NEXUS_SESSION_TTL - settings.mx_session_margin
        if self._session_ttl <= timedelta(0):
            raise ValueError("REAUTH_MX_SESSION_MARGIN must be shorter than 30 minutes")
        self._unknown_hosts: set[str] = set()
        self._queries: dict[tuple[tuple[str, str], ...], str] = {}
        self._templates: dict[tuple[str, bytes, tuple[tuple[str, str], ...]], httpx.Headers] = {}
        self._state: _LoopState | None = None

    def __repr__(self) -> str:
        return f"MxClient(api={self._dialect.name}, base_url={self._settings.mx_base_url!r})"

    @property
    def api(self) -> str:
        """The API and version in use, e.g. ``nexus`` or ``platform v20250224``."""
        return self._dialect.name

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

    async def prepare(self) -> None:
        """Build this loop's transport, rate limiter and session store now (an SSL context
        among them) instead of in the first call of the first batch. Opens no connection."""
        self._loop_state()

    async def aclose(self) -> None:
        """Close connections on the current loop. Safe to call twice; the client stays usable."""
        state, self._state = self._state, None
        if state is None:
            return
        if state.loop is not asyncio.get_running_loop():
            raise RuntimeError("MxClient.aclose() must run on the loop the client was used on")
        try:
            await state.health.aclose()
            await state.transport.aclose()
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
        transport = tracing.instrument_transport(transport)  # itself unless tracing is on
        redis: aioredis.Redis | None = None
        limiter: RateLimiter
        store: SessionStore
        tally: MemoryTally | RedisTally
        namespace = self._client_id or "default"
        window = s.mx_credential_failure_window
        # No caller waits longer for a rate-limit slot than for an answer.
        max_wait = s.mx_timeout
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
                **client_options(),  # no package-metadata read per new connection
            )
            redis = aioredis.Redis.from_pool(pool)  # from_pool: aclose() closes the pool
            limiter = RedisRateLimiter(
                redis,
                s.mx_rate_limit_per_second,
                key=f"{KEY_PREFIX}{namespace}",
                max_wait=max_wait,
            )
            store = RedisSessionStore(redis, self._session_ttl, namespace=namespace)
            tally = RedisTally(redis, window, namespace=namespace)
        else:
            limiter = LocalRateLimiter(s.mx_rate_limit_per_second, max_wait=max_wait)
            store = MemorySessionStore(self._session_ttl, self._clock)
            tally = MemoryTally(window)
        # The creation lock must outlive a creation: two MX requests, each bounded by timeout,
        # and the wait for the verdict on a refusal.
        lock_ttl = timedelta(seconds=4 * s.mx_timeout + 5)
        return _LoopState(
            loop=loop,
            transport=transport,
            semaphore=asyncio.Semaphore(s.mx_max_concurrency),
            limiter=limiter,
            sessions=SessionManager(store, lock_ttl=lock_ttl),
            health=CredentialHealth(
                tally,
                threshold=s.mx_credential_failure_users,
                hold=min(HOLD_SECONDS, s.mx_timeout),
            ),
            redis=redis,
        )

    # --- the calls -----------------------------------------------------------------------------
    async def admit(self, request: OAuthRequest) -> Permit:
        """What a call needs before it takes an in-flight slot: on Nexus the user's session
        (made or read, single-flight), then a rate-limit slot (:class:`Permit`). Pass the
        permit to the call; meanwhile other calls use the in-flight slots.

        Raises the errors of :meth:`generate_oauth_window_uri` that are not about the answer
        (session creation failures, RateLimitBacklog, MxConnectionError).
        """
        state = self._loop_state()
        if self._dialect.auth is Auth.SESSION:
            assert isinstance(self._dialect, NexusDialect)
            flow = self._dialect.sessions
            user = self._dialect.user_key(request.user_guid, request.user_id)

            async def create() -> str:
                return await self._create_session(state, flow, user)

            await state.sessions.token_for(user, create)
        return await self._permit(state)

    @staticmethod
    async def _permit(state: _LoopState) -> Permit:
        if waits.FILE is None:
            return await state.limiter.permit()
        t0 = time.perf_counter()  # the benchmark's wait timings (bench.waits)
        try:
            return await state.limiter.permit()
        finally:
            waits.note("rate_permit", time.perf_counter() - t0)

    async def generate_oauth_window_uri(
        self, request: OAuthRequest, *, permit: Permit | None = None
    ) -> OAuthWindow:
        """A fresh one-time OAuth window URI for ``request.member_guid``; ``permit`` (from
        :meth:`admit`) stands for its first request's rate-limit slot while still fresh.

        Raises:
            NotOAuthCapable (incl. BlankOAuthUri), MemberNotFound, MxBadRequest,
                UnsafeOAuthUri: permanent, the member's problem.
            MxConfigurationError (MxRequestRefused, MxUnauthorized, MxForbidden,
                NexusNotEnabled): the whole client's problem; stop and alert.
            MxTransientError (RateLimited, ServerError, MxTimeout, MxConnectionError,
                BadResponse, SessionExpired, UserRefused, UserNotFound): retry later.
            ValueError: ``client_redirect_url`` is not under REAUTH_ALLOWED_REDIRECT_PREFIXES.
        """
        self._check_redirect(request)
        state = self._loop_state()
        call = self._dialect.oauth_window(request)
        user = self._dialect.user_key(request.user_guid, request.user_id)
        answer = await self._authorized(state, call, user, permit)
        doc = self._success_doc(answer, call.what)
        fields = self._dialect.window_fields(doc, what=call.what, status=answer.status)
        uri = fields.oauth_window_uri
        if uri is None or not uri.strip():
            # MX documents the URI as blank for a member that does not use OAuth: permanent.
            raise BlankOAuthUri(
                f"{call.what}: 200 with a blank oauth_window_uri (member cannot use OAuth)",
                status=answer.status,
            )
        self._check_uri(uri, request.member_guid, call.what)
        window = OAuthWindow(
            member_guid=fields.member_guid or request.member_guid,
            oauth_window_uri=uri,
            generated_at=self._clock(),
        )
        log.debug(
            "mx.oauth_window",
            member_guid=request.member_guid,
            mx_member_guid=window.member_guid,
            uri_fingerprint=fingerprint_uri(window.oauth_window_uri),
        )
        return window

    async def read_member(self, request: MemberRequest) -> MemberState:
        """The member's live state as MX sees it now (connection status, aggregation).

        Raises the same errors as :meth:`generate_oauth_window_uri`, except the URI ones
        (404: MemberNotFound).
        """
        state = self._loop_state()
        call = self._dialect.read_member(request)
        user = self._dialect.user_key(request.user_guid, request.user_id)
        answer = await self._authorized(state, call, user)
        doc = self._success_doc(answer, call.what)
        member = self._dialect.member_state(
            doc,
            asked=request.member_guid,
            read_at=self._clock(),
            what=call.what,
            status=answer.status,
        )
        log.debug(
            "mx.member_state",
            member_guid=request.member_guid,
            connection_status=member.connection_status,
            is_being_aggregated=member.is_being_aggregated,
        )
        return member

    def _check_redirect(self, request: OAuthRequest) -> None:
        url = request.client_redirect_url
        if url is not None and not redirect_allowed(url, self._settings.allowed_redirect_prefixes):
            raise ValueError(
                "client_redirect_url is not under any prefix in REAUTH_ALLOWED_REDIRECT_PREFIXES"
            )

    def _check_uri(self, uri: str, member_guid: str, what: str) -> None:
        """Refuse a URI we must not hand to a person; count and log an unknown host."""
        check = check_uri(uri, self._uri_rules)
        if check.refusal is not None:
            metrics.MX_URI_REFUSED.labels(reason=check.refusal.value).inc()
            # Error level: MX answered something that looks deceptive or broken; someone should
            # look. The URI itself is never logged (its token is a secret), only the host.
            log.error(
                "mx.oauth_uri_refused",
                member_guid=member_guid,
                reason=check.refusal.value,
                host=check.host,
            )
            raise UnsafeOAuthUri(
                f"{what}: oauth_window_uri refused ({check.refusal.value})",
                reason=check.refusal.value,
            )
        if not check.known_host:
            metrics.MX_URI_UNKNOWN_HOST.inc()
            first = check.host not in self._unknown_hosts
            if first and len(self._unknown_hosts) < _UNKNOWN_HOSTS_LOGGED_MAX:
                self._unknown_hosts.add(str(check.host))
            (log.warning if first else log.debug)(
                "mx.oauth_uri_unknown_host",
                member_guid=member_guid,
                host=check.host,
                hint="set REAUTH_MX_URI_HOSTS to enforce an allow-list",
            )

    # --- credentials ---------------------------------------------------------------------------
    async def _authorized(
        self, state: _LoopState, call: Call, user: str, permit: Permit | None = None
    ) -> _Answer:
        """Send ``call`` with the dialect's credentials. Returns the answer unless it is a
        refusal (raised per :mod:`worker.mx.health`) or a session that stays expired."""
        if self._dialect.auth is Auth.BASIC:
            answer = await self._exchange(state, call, {"Authorization": self._basic}, permit)
            scope = self._dialect.health_scope
        else:
            answer = await self._with_session(state, call, user, permit)
            scope = SCOPE_NEXUS
        if answer.ok:
            await state.health.succeeded(scope)
        elif answer.status in _REFUSALS:
            await self._refused(state, scope, user, answer, call.what)
        return answer

    async def _with_session(
        self, state: _LoopState, call: Call, user: str, permit: Permit | None
    ) -> _Answer:
        """Nexus: send with the user's session; on 401/4011 drop it, get the newest one
        (single-flight per user) and send again, at most :data:`SESSION_TRIES` times."""
        assert isinstance(self._dialect, NexusDialect)
        flow = self._dialect.sessions

        async def create() -> str:
            return await self._create_session(state, flow, user)

        for attempt in range(1, SESSION_TRIES + 1):
            token = await state.sessions.token_for(user, create)
            answer = await self._exchange(state, call, {P.HEADER_SESSION_TOKEN: token}, permit)
            permit = None  # one slot, one request
            if answer.ok or not flow.is_session_expired(answer.status, answer.doc):
                return answer
            # MX expired the session (or never had it). Another call may already have made a
            # new one: drop only ours (compare-and-delete) and ask again.
            log.debug("mx.session_refresh", mx_user=user, status=answer.status, attempt=attempt)
            await state.sessions.drop(user, token)
        raise SessionExpired(
            f"{call.what}: session expired on {SESSION_TRIES} sessions in a row",
            status=answer.status,
        )

    async def _create_session(self, state: _LoopState, flow: SessionFlow, user: str) -> str:
        """SSO API token (one-time, 10 min) exchanged for a Nexus session token."""
        call = flow.api_token(user)
        answer = await self._exchange(state, call, {P.HEADER_API_KEY: self._api_key})
        if not answer.ok:
            if answer.status in _REFUSALS or answer.status == 404:
                # 404 is MX's documented "Nexus not enabled for this client", and also what an
                # unknown user may get: only many distinct users tell them apart.
                await self._refused(state, SCOPE_SSO, user, answer, call.what)
            raise self._error(answer, call.what)
        await state.health.succeeded(SCOPE_SSO)
        api_token = require_str(
            decode_success(answer.status, answer.body, what=call.what),
            "api_token",
            "token",
            what=call.what,
            status=answer.status,
        )
        call = flow.session()
        answer = await self._exchange(state, call, {P.HEADER_API_TOKEN: api_token})
        if not answer.ok:
            if answer.status in _REFUSALS or answer.status == 404:
                await self._refused(state, SCOPE_NEXUS, user, answer, call.what)
            raise self._error(answer, call.what)
        log.debug("mx.session_made", mx_user=user)
        return require_str(
            decode_success(answer.status, answer.body, what=call.what),
            "session",
            "token",
            what=call.what,
            status=answer.status,
        )

    async def _refused(
        self, state: _LoopState, scope: str, user: str, answer: _Answer, what: str
    ) -> NoReturn:
        """MX refused ``user``: client-wide once enough distinct users were refused (see
        :mod:`worker.mx.health`), else that user's transient problem."""
        status = answer.status
        users = self._settings.mx_credential_failure_users
        if await state.health.refused(scope, user):
            log.error("mx.credentials_refused", scope=scope, status=status, users=users)
            evidence = f"for {users} or more distinct users with no success in between"
            if status == 404:
                raise NexusNotEnabled(
                    f"{what}: 404 {evidence}: Nexus not enabled for this client id, or wrong "
                    "REAUTH_MX_SSO_BASE_URL",
                    status=status,
                )
            if status == 403:
                raise MxForbidden(
                    f"{what}: 403 {evidence}: IP not allow-listed or feature not enabled",
                    status=status,
                )
            raise MxUnauthorized(
                f"{what}: {status} {evidence}: check REAUTH_MX_CLIENT_ID, REAUTH_MX_API_KEY and "
                "the MX environment",
                status=status,
            )
        log.warning("mx.user_refused", scope=scope, status=status, mx_user=user)
        if status == 404:
            raise UserNotFound(f"{what}: 404 for user {user}", status=status, user=user)
        raise UserRefused(f"{what}: {status} for user {user}", status=status, user=user)

    # --- shared --------------------------------------------------------------------------------
    def _error(self, answer: _Answer, what: str) -> MxError:
        retry_after = parse_retry_after(answer.headers.get("retry-after"), self._clock)
        return error_for(answer.status, answer.doc, what=what, retry_after=retry_after)

    def _success_doc(self, answer: _Answer, what: str) -> dict[str, Any]:
        if not answer.ok:
            raise self._error(answer, what)
        return decode_success(answer.status, answer.body, what=what)

    def _request(self, call: Call, auth: dict[str, str]) -> httpx.Request:
        """``httpx.Request(method, url, headers={common, call, auth})``, built from parts kept
        between calls: the query string per distinct parameters, and the headers httpx would
        compute (Host, Content-Length for a POST, ours, the dialect's) per distinct call shape.
        Only the credentials are added per request. Equal to the plain construction
        (tests/mx/test_transport_fast_path.py)."""
        url = call.url
        if call.params:
            key = tuple(call.params.items())
            query = self._queries.get(key)
            if query is None:
                query = urlencode(call.params)
                if len(self._queries) < _CACHE_MAX:
                    self._queries[key] = query
            url = f"{url}?{query}"
        target = request_url(url)
        shape = (call.method, target.netloc, tuple(call.headers.items()))
        template = self._templates.get(shape)
        if template is None:
            template = httpx.Request(
                call.method, target, headers={**_COMMON_HEADERS, **call.headers}
            ).headers
            if len(self._templates) < _CACHE_MAX:
                self._templates[shape] = template
        headers = httpx.Headers(template)  # a copy of the encoded list, no re-encoding
        for name, value in auth.items():
            headers[name] = value
        request = httpx.Request(
            call.method,
            target,
            headers=headers,
            stream=_EMPTY_BODY,  # a given stream: httpx adds no headers of its own again
            extensions={"timeout": self._timeout_ext},
        )
        request.read()
        return request

    async def _exchange(
        self,
        state: _LoopState,
        call: Call,
        auth: dict[str, str],
        permit: Permit | None = None,
    ) -> _Answer:
        """One HTTP request under the concurrency cap and the rate limit; body read capped.

        The rate-limit slot is reserved before the cap (``permit``, from :meth:`admit`, or
        here), so the Redis round trip holds no in-flight slot; inside the cap the request
        waits for its slot, or takes a new one right before sending if the permit has grown
        stale meanwhile (worker.mx.ratelimit: no request starts before its slot or long after).

        Raises only :class:`MxError` subclasses (transport failures, oversized bodies, no
        rate-limit slot within the timeout).
        """
        what = call.what
        if permit is None:
            permit = await self._permit(state)
        async with state.semaphore:
            if waits.FILE is None:
                if not await permit.use(state.loop):
                    await state.limiter.acquire()
            else:  # the benchmark's wait timings (bench.waits)
                t0 = time.perf_counter()
                if not await permit.use(state.loop):
                    waits.note("rate_permit_stale", state.loop.time() - permit.at)
                    await state.limiter.acquire()
                waits.note("rate_limiter", time.perf_counter() - t0)
            started = time.perf_counter()
            status = 0
            try:
                async with asyncio.timeout(self._timeout):
                    # A plain Request with the query pre-encoded, sent straight to the transport
                    # (see the module docstring): no client-level work per call.
                    request = self._request(call, auth)
                    response = await state.transport.handle_async_request(request)
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


def build_mx_client(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> MxClient:
    """The MX client for ``settings`` (``REAUTH_MX_*``; Redis shared state when
    ``REAUTH_REDIS_URL`` is set). ``transport`` replaces the network (tests); ``clock`` stamps
    ``generated_at``/``read_at`` and times the in-process session cache.

    Raises:
        ConfigError: plain-http MX URLs without REAUTH_ALLOW_INSECURE_URLS.
    """
    register_secret(settings.mx_api_key.get_secret_value())
    return MxClient(settings, transport=transport, clock=clock)
