"""The ASGI app of ``reauth serve``: reconnect pages, OAuth completion, health.

Stateless: every request reads what it needs from the database, so several processes can run
behind a load balancer. It shares the runtime's MX client (sessions and the global rate limit)
with the workers. Nothing it logs carries a token or a URI (uvicorn's access log is off).
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar
from urllib.parse import urlencode, urlsplit

import structlog
from anyio import to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from worker import metrics
from worker.clock import utc_now
from worker.errors import MxError, ReauthError
from worker.mx import OAuthWindow
from worker.redis_options import client_options
from worker.runtime import Runtime
from worker.service import reconnect
from worker.store.db import session_scope
from worker.web import pages, webhooks

log = structlog.get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: ``reauth serve`` pings a pooled database connection only after it sat idle this long, not on
#: every checkout (a round trip per request otherwise; see store.db.make_engine).
PING_IDLE_AFTER_S = 10.0

#: Threads running the routes' database work in each process of ``reauth serve`` (Starlette's
#: thread pool has 40; it is capped to this too, for the webhook intake), and the size of the
#: connection pool to match. With more threads than pooled connections, concurrent requests
#: checked out overflow connections that the pool closed again on return: under load one new
#: PostgreSQL connection (a server process started and torn down) per ~8 pages. The work is
#: short (one statement, one small transaction), so 10 is plenty.
DB_THREADS = 10


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _path(request: Request) -> str:
    """The request's path as ``request.url.path`` gives it (the same escapes), without building
    and parsing a whole URL: that was a tenth of a page's CPU."""
    path: str = request.scope["path"]
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def security_headers(nonce: str, *, form_action: str, hsts: bool) -> dict[str, str]:
    """The headers of every page this server answers (the ops listener's too)."""
    h = {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            f"connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; "
            "base-uri 'none'"
        ),
    }
    if hsts:
        h["Strict-Transport-Security"] = "max-age=31536000"
    return h


class ReconnectApp:
    """Routes over one runtime. Built by :func:`create_app`."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        settings = rt.settings
        self.public_origin = _origin(settings.public_url or "")
        self.origins = list(settings.mx_oauth_origins)
        self.hsts = (settings.public_url or "").startswith("https://")
        # form-action covers the redirect after the POST (Chromium enforces it on redirects);
        # MX hands out bank authorize pages on any host, so https: as a whole is allowed.
        self.form_action = "'self' https:" + (" http:" if settings.allow_insecure_urls else "")
        self.confirmer = reconnect.Confirmer(rt)
        # The routes' database work, on threads of their own: the loop hands a call to the
        # executor directly (anyio's run_sync, behind Starlette's run_in_threadpool, cost about
        # as much CPU per page as the page's read itself).
        self.threads = ThreadPoolExecutor(DB_THREADS, thread_name_prefix="reauth-db")

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a database thread, in a copy of this task's context."""
        ctx = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.threads, lambda: ctx.run(fn, *args, **kwargs))

    # --- plumbing ---------------------------------------------------------------------------------

    def foreign(self, request: Request) -> bool:
        """The POST names another site as its origin. Browsers send ``Origin: null`` from our
        own page (its Referrer-Policy is no-referrer), so only a named other origin is
        refused; the link's token, not the origin, is what authorises a press."""
        origin = request.headers.get("origin")
        return origin is not None and origin not in {"null", self.public_origin}

    def headers(self, nonce: str) -> dict[str, str]:
        return security_headers(nonce, form_action=self.form_action, hsts=self.hsts)

    def html(self, status: int, render: Callable[[str], str]) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render(nonce), status_code=status, headers=self.headers(nonce))

    def message(self, status: int, title: str, text: str, *, json: bool) -> Response:
        if json:
            return JSONResponse(
                {"message": text, "done": status == 200}, status_code=status,
                headers=self.headers(""),
            )  # fmt: skip
        return self.html(status, lambda nonce: pages.message(title, text, nonce))

    def not_found(self, *, json: bool = False) -> Response:
        return self.message(
            404, "Link not found", "This link is not valid. Open the app to reconnect.", json=json
        )

    def expired(self, *, json: bool = False) -> Response:
        return self.message(
            410, "This link has expired", "Open the app to reconnect your bank.", json=json
        )

    def closed(self, institution: str, *, json: bool = False) -> Response:
        return self.message(
            200, "You're already reconnected",
            f"Your connection to {institution} is working again. Nothing else to do.", json=json,
        )  # fmt: skip

    async def view(self, token: str) -> reconnect.LinkView | Response:
        try:
            return await self.db(reconnect.open_link, self.rt, token, utc_now())
        except reconnect.LinkExpired:
            return self.expired()
        except reconnect.LinkNotFound:
            return self.not_found()

    # --- routes -----------------------------------------------------------------------------------

    async def show(self, request: Request) -> Response:
        """GET: the page. No MX call, so a prefetching scanner spends nothing."""
        signin = self.rt.settings.reconnect_signin_url
        if signin and "from_signin" not in request.query_params:
            # The app's own sign-in first; it sends the person on to ``next``. A gate for the
            # experience, not a security boundary (the link itself is the bearer credential).
            here = f"{self.rt.settings.public_url}{_path(request)}?from_signin=1"
            return RedirectResponse(
                f"{signin}?{urlencode({'next': here})}", status_code=303, headers=self.headers("")
            )
        found = await self.view(request.path_params["token"])
        if isinstance(found, Response):
            return found
        if not found.open:
            return self.closed(found.institution)
        action = _path(request)
        return self.html(
            200,
            lambda nonce: pages.reconnect(
                institution=found.institution, why=found.why, action=action,
                report=f"{action}/report", origins=self.origins, nonce=nonce,
            ),
        )  # fmt: skip

    async def press(self, request: Request) -> Response:
        """POST: a fresh BROWSER URI from MX, answered 303 (or JSON for the page's script)."""
        wants_json = "application/json" in request.headers.get("accept", "")
        if self.foreign(request):
            metrics.RECONNECT_CLICKS.labels(outcome="forbidden").inc()
            return self.message(403, "Not allowed", "This request did not come from our page.",
                                json=wants_json)  # fmt: skip
        found = await self.view(request.path_params["token"])
        if isinstance(found, Response):
            # The other outcomes are counted where the click is recorded (service.reconnect).
            expired = found.status_code == 410
            metrics.RECONNECT_CLICKS.labels(outcome="expired" if expired else "not_found").inc()
            return self.not_found(json=True) if wants_json and found.status_code == 404 else found
        now = utc_now()
        if not found.open:
            await self.db(reconnect.record_closed, self.rt, found, now, "closed")
            return self.closed(found.institution, json=wants_json)
        if not reconnect.allowed_to_mint(self.rt, found):
            await self.db(reconnect.record_closed, self.rt, found, now, "rate_limited")
            return self.message(
                429, "Too many tries", "Please wait a while before trying again.", json=wants_json
            )
        started = time.perf_counter()
        result: OAuthWindow | MxError
        try:
            result = await reconnect.ask_mx(self.rt, found)
        except MxError as exc:
            result = exc
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        minted = await self.db(reconnect.record_mint, self.rt, found, result, utc_now(), latency_ms)
        if minted.uri is None:
            return self.message(
                503, "Your bank can't be reached right now", "Please try again in a few minutes.",
                json=wants_json,
            )  # fmt: skip
        if wants_json:
            return JSONResponse(
                {"uri": minted.uri, "click": reconnect.click_token(self.rt, minted, now)},
                headers=self.headers(""),
            )
        return RedirectResponse(minted.uri, status_code=303, headers=self.headers(""))

    async def report(self, request: Request) -> Response:
        """The page's script reports MX's oauthComplete message; MX is asked whether it is so."""
        if self.foreign(request):
            return self.message(403, "Not allowed", "Not from our page.", json=True)
        found = await self.view(request.path_params["token"])
        if isinstance(found, Response):
            return found
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        now = utc_now()
        status, reason = reconnect.parse_report(body.get("status"), body.get("error_reason"))
        click = reconnect.click_from_token(self.rt, body.get("click"), now)
        await self.db(
            reconnect.record_report, self.rt, found, reconnect.Report(status, reason, click), now
        )
        if status != "success":
            return JSONResponse(
                {"done": False, "message": "Reconnecting didn't finish. You can try again."},
                headers=self.headers(""),
            )
        if await self.confirmer.confirm(found.target):
            return JSONResponse(
                {"done": True, "message": f"You're reconnected to {found.institution}."},
                headers=self.headers(""),
            )
        return JSONResponse(
            {"done": False, "message": "Thanks! Your bank is still finishing up; "
                                       "this can take a few minutes."},
            headers=self.headers(""),
        )  # fmt: skip

    async def complete(self, request: Request) -> Response:
        """Where APP flows land (REAUTH_APP_REDIRECT_URL pointing here): record the result,
        confirm it with MX, send the person back to the app (or show a done page)."""
        q = request.query_params
        now = utc_now()
        status, reason = reconnect.parse_report(q.get("status"), q.get("error_reason"))
        target = await self.db(
            lambda: reconnect.app_return(
                self.rt, q.get("state"), q.get("member_guid"),
                report=reconnect.Report(status, reason), now=now,
            )
        )  # fmt: skip
        confirmed = False
        if target is not None and status == "success":
            confirmed = await self.confirmer.confirm(target)
        back = self.rt.settings.app_return_url
        if back:
            return RedirectResponse(back, status_code=303, headers=self.headers(""))
        if confirmed:
            return self.message(200, "You're reconnected", "You can close this window.", json=False)
        if status == "success":
            return self.message(
                200, "Thanks!", "Your bank is finishing up. You can close this window.", json=False
            )
        return self.message(
            200, "Reconnecting didn't finish", "Open the app to try again.", json=False
        )

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})

    async def readyz(self, request: Request) -> Response:
        """Ready when the database and (if configured) Redis answer."""
        try:
            await self.db(_ping, self.rt)
        except (ReauthError, OSError) as exc:
            log.warning("readyz.failed", error=type(exc).__name__)
            return PlainTextResponse(f"not ready: {exc}", status_code=503)
        return PlainTextResponse("ready", headers={"Cache-Control": "no-store"})


def _ping(rt: Runtime) -> None:
    from worker.store import members

    with session_scope(rt.sessions) as s:
        members.due_count(s, utc_now())
    if rt.settings.redis_url:
        import redis

        from worker.errors import StorageError

        client = redis.Redis.from_url(
            rt.settings.redis_url, socket_connect_timeout=2, **client_options()
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StorageError(f"redis unreachable: {type(exc).__name__}") from exc
        finally:
            client.close()


def create_app(rt: Runtime, *, close_runtime: bool = False) -> Starlette:
    """The ASGI app over ``rt``. The caller closes the runtime when the server stops, unless
    ``close_runtime`` (one process of ``reauth serve --workers N``: its server's shutdown is the
    last thing that process runs)."""
    routes = ReconnectApp(rt)
    handlers: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/r/{token}", routes.show, ["GET"]),
        ("/r/{token}", routes.press, ["POST"]),
        ("/r/{token}/report", routes.report, ["POST"]),
        ("/oauth/complete", routes.complete, ["GET"]),
        ("/healthz", routes.healthz, ["GET"]),
        ("/readyz", routes.readyz, ["GET"]),
    ]
    handlers += webhooks.routes(rt)  # MX webhooks (docs/WEBHOOKS.md)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Per event loop (this server's): the webhook intake's run_in_threadpool.
        to_thread.current_default_thread_limiter().total_tokens = DB_THREADS
        if rt.settings.mx_webhooks_enabled:
            # So the first webhook's apply job is queued at once, not after the Celery app's
            # import and the broker's first connection. On a thread of its own, not awaited: a
            # broker that is slow or down must not hold up start-up (a rolling restart gives a
            # new process a few seconds), and the answers never wait for queueing anyway.
            threading.Thread(
                target=rt.followups.prepare, name="reauth-followups-prepare", daemon=True
            ).start()
        yield
        # The MX client's connections live on this server's loop: close them here.
        await rt.aclose_mx()
        await run_in_threadpool(routes.threads.shutdown)  # after the calls in flight
        if close_runtime:
            await run_in_threadpool(rt.close)  # the database pool, the sink

    return Starlette(
        routes=[Route(path, fn, methods=m) for path, fn, m in handlers], lifespan=lifespan
    )
