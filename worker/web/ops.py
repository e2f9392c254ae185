"""The ops listener of ``reauth serve``: ``GET /ops/report`` (the funnel page) behind HTTP Basic.

A separate ASGI app on its own socket (``REAUTH_OPS_HOST``:``REAUTH_OPS_PORT``, loopback by
default), never routed on the public port. It runs only when the port and both credentials
(``REAUTH_OPS_USERNAME``/``REAUTH_OPS_PASSWORD``) are set; credentials are compared in constant
time. Every answer carries the public pages' security headers (no-store, CSP with a nonce).
"""

from __future__ import annotations

import secrets
from html import escape

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from worker.clock import utc_now
from worker.errors import InputError
from worker.runtime import Runtime
from worker.service import report
from worker.service.report_html import render
from worker.web import basic_auth
from worker.web.app import security_headers

log = structlog.get_logger(__name__)


def _headers(nonce: str) -> dict[str, str]:
    return security_headers(nonce, form_action="'none'", hsts=False)


def _plain(status: int, text: str, **extra: str) -> Response:
    nonce = secrets.token_urlsafe(16)
    body = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status}</title>'
        f"</head><body><p>{escape(text)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={**_headers(nonce), **extra})


def create_ops_app(rt: Runtime) -> Starlette:
    """The ops app over ``rt`` (needs REAUTH_OPS_USERNAME and REAUTH_OPS_PASSWORD)."""
    settings = rt.settings
    if settings.ops_username is None or settings.ops_password is None:
        raise InputError("the ops listener needs REAUTH_OPS_USERNAME and REAUTH_OPS_PASSWORD")
    username = settings.ops_username.encode()
    password = settings.ops_password.get_secret_value().encode()

    async def ops_report(request: Request) -> Response:
        if not basic_auth.matches(request.headers.get("authorization"), username, password):
            log.warning("ops.unauthorized", path=request.url.path)
            return _plain(401, "Authentication required.", **{
                "WWW-Authenticate": 'Basic realm="reauth ops", charset="UTF-8"'})  # fmt: skip
        since = request.query_params.get("since", "30d")
        by = request.query_params.get("by") or None
        try:
            data = await run_in_threadpool(report.build, rt, since=since, by=by, now=utc_now())
        except InputError as exc:
            return _plain(400, str(exc))
        nonce = secrets.token_urlsafe(16)
        return HTMLResponse(render(data, nonce=nonce), headers=_headers(nonce))

    async def not_found(request: Request, exc: Exception) -> Response:
        return _plain(404, "Not found.")

    return Starlette(
        routes=[Route("/ops/report", ops_report, methods=["GET"])],
        exception_handlers={404: not_found, 405: not_found},
    )
