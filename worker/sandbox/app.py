"""The sandbox endpoints and MX-side state: SSO API tokens, Nexus sessions, OAuth window URIs.

Endpoints, all on one app and port (``/sso`` prefixes the SSO API):

* ``GET /sso/{client_id}/users/{user_id}/api_token[.json]`` with ``MD-API-KEY`` and
  ``Accept: application/vnd.moneydesktop.sso.v3+json``: a one-time API token, valid 10 minutes.
* ``POST /sessions`` with ``MD-API-TOKEN`` (consumed) and the Nexus media type: a session token
  for the token's user, with MX's 30-minute sliding expiry.
* ``GET /members/{guid}/oauth_window_uri`` with ``MD-SESSION-TOKEN`` (Nexus).
* ``GET /users/{user_guid}/members/{guid}/oauth_window_uri`` with HTTP Basic (Platform).
* ``GET /oauth/predirect_to/{guid}/{token}``: "opens" a URI once (200), then 410: URIs are
  one-time (when ``uri_base`` points at the sandbox).
* Admin: ``GET|PUT /_sandbox/config``, ``GET|DELETE /_sandbox/requests``, ``GET /_sandbox/stats``.

Checks in order: credentials (401), media types (406 for Accept, 415 for Content-Type), then the
request. Errors use the configured envelope, since MX's is undocumented.
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from worker.mx import params as P
from worker.sandbox.config import SandboxConfig
from worker.sandbox.faults import FaultMiddleware, RequestLog
from worker.sandbox.members import MemberSource, answered_guid, open_source

_MEDIA = {"sso": P.SSO_MEDIA_TYPE, "platform": P.PLATFORM_MEDIA_TYPE}


@dataclass
class _Session:
    user: str
    expires_at: float


class _Reject(Exception):
    """Internal: stop handling and answer this response."""

    def __init__(self, response: Response) -> None:
        self.response = response


class Sandbox:
    """The ASGI app plus its state. ``config`` is live: change it and the next request sees it."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.log = RequestLog()
        self.rng = random.Random(self.config.seed)
        self._api_tokens: dict[str, tuple[str, float]] = {}
        self._sessions: dict[str, _Session] = {}
        self._uris: dict[str, bool] = {}  # URI token -> opened already
        self._nexus_calls = 0
        self.stats: dict[str, int] = {"api_tokens_issued": 0, "sessions_created": 0, "uris": 0}
        self._source: MemberSource | None = None
        self._source_key: tuple[str | None, str | None] | None = None
        routes = [
            Route("/sso/{client_id}/users/{user_id}/api_token", self.sso, methods=["GET"]),
            Route("/sso/{client_id}/users/{user_id}/api_token.json", self.sso, methods=["GET"]),
            Route("/sessions", self.create_session, methods=["POST"]),
            Route("/members/{member_guid}/oauth_window_uri", self.nexus_oauth, methods=["GET"]),
            Route(
                "/users/{user_guid}/members/{member_guid}/oauth_window_uri",
                self.platform_oauth,
                methods=["GET"],
            ),
            Route("/oauth/predirect_to/{member_guid}/{token}", self.open_uri, methods=["GET"]),
            Route("/_sandbox/config", self.get_config, methods=["GET"]),
            Route("/_sandbox/config", self.put_config, methods=["PUT"]),
            Route("/_sandbox/requests", self.get_requests, methods=["GET"]),
            Route("/_sandbox/requests", self.clear_requests, methods=["DELETE"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
        ]
        self._asgi = FaultMiddleware(self, Starlette(routes=routes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._asgi(scope, receive, send)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def media_type(endpoint: str) -> str:
        return _MEDIA.get(endpoint, P.NEXUS_MEDIA_TYPE)

    def error_response(
        self,
        status: int,
        code: int | None,
        message: str,
        endpoint: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        envelope = self.config.error_envelope
        body: dict[str, Any]
        if envelope == "error-object":
            body = {"error": {"code": code, "message": message}}
        elif envelope == "error-string":
            body = {"code": code, "error": message}
        else:
            body = {"code": code, "message": message}
        if code is None:
            body.pop("code", None)
            if isinstance(body.get("error"), dict):
                body["error"].pop("code")
        return JSONResponse(
            body, status_code=status, headers=headers, media_type=self.media_type(endpoint)
        )

    def _ok(self, data: dict[str, Any], endpoint: str) -> Response:
        return JSONResponse(data, media_type=self.media_type(endpoint))

    def _require_accept(self, request: Request, endpoint: str) -> None:
        if self.media_type(endpoint) not in request.headers.get("accept", ""):
            raise _Reject(self.error_response(406, None, "Not Acceptable", endpoint))

    def _require_content_type(self, request: Request, *, required: bool) -> None:
        ctype = request.headers.get("content-type")
        if (ctype is None and required) or (ctype is not None and P.NEXUS_MEDIA_TYPE not in ctype):
            raise _Reject(self.error_response(415, None, "Unsupported Media Type", "nexus"))

    def _members(self) -> MemberSource:
        key = (self.config.members_file, self.config.members_db_url)
        if self._source is None or key != self._source_key:
            self.close()
            self._source = open_source(*key)
            self._source_key = key
        return self._source

    def _new_token(self) -> str:
        return secrets.token_urlsafe(32)

    # --- SSO -----------------------------------------------------------------------------------
    async def sso(self, request: Request) -> Response:
        try:
            cfg = self.config
            key = request.headers.get(P.HEADER_API_KEY)
            if request.path_params["client_id"] != cfg.client_id or key != cfg.api_key:
                return self.error_response(401, None, "Invalid client id or API key", "sso")
            self._require_accept(request, "sso")
        except _Reject as reject:
            return reject.response
        token = self._new_token()
        user = request.path_params["user_id"]
        self._api_tokens[token] = (user, time.monotonic() + cfg.api_token_ttl_seconds)
        self.stats["api_tokens_issued"] += 1
        return self._ok({"api_token": {"token": token}}, "sso")

    # --- Nexus ---------------------------------------------------------------------------------
    async def create_session(self, request: Request) -> Response:
        token = request.headers.get(P.HEADER_API_TOKEN)
        if not token:
            return self.error_response(401, None, "Missing API token", "sessions")
        try:
            self._require_accept(request, "sessions")
            self._require_content_type(request, required=True)
        except _Reject as reject:
            return reject.response
        entry = self._api_tokens.pop(token, None)  # one-time use, valid or not
        if entry is None or entry[1] < time.monotonic():
            return self.error_response(401, None, "Invalid or expired API token", "sessions")
        session_token = self._new_token()
        self._sessions[session_token] = _Session(
            entry[0], time.monotonic() + self.config.session_ttl_seconds
        )
        self.stats["sessions_created"] += 1
        return self._ok({"session": {"token": session_token}}, "sessions")

    async def nexus_oauth(self, request: Request) -> Response:
        token = request.headers.get(P.HEADER_SESSION_TOKEN)
        if not token:
            return self.error_response(401, None, "Missing session token", "nexus")
        try:
            self._require_accept(request, "nexus")
            self._require_content_type(request, required=False)
        except _Reject as reject:
            return reject.response
        session = self._sessions.get(token)
        now = time.monotonic()
        if session is None:
            return self.error_response(401, None, "Invalid session", "nexus")
        self._nexus_calls += 1
        every = self.config.expire_session_every
        if session.expires_at < now or (every and self._nexus_calls % every == 0):
            del self._sessions[token]
            return self.error_response(401, P.SESSION_EXPIRED_CODE, "Session expired", "nexus")
        session.expires_at = now + self.config.session_ttl_seconds  # sliding expiry
        return await self._oauth_answer(request, session.user, "nexus")

    # --- Platform ------------------------------------------------------------------------------
    async def platform_oauth(self, request: Request) -> Response:
        if not self._basic_ok(request.headers.get("authorization", "")):
            return self.error_response(401, None, "Invalid credentials", "platform")
        try:
            self._require_accept(request, "platform")
        except _Reject as reject:
            return reject.response
        return await self._oauth_answer(request, request.path_params["user_guid"], "platform")

    def _basic_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(decoded, f"{self.config.client_id}:{self.config.api_key}")

    # --- the OAuth window ----------------------------------------------------------------------
    async def _oauth_answer(self, request: Request, user: str, endpoint: str) -> Response:
        query = request.query_params
        referral = query.get(P.Q_REFERRAL_SOURCE, P.REFERRAL_BROWSER)
        problem = None
        if referral not in P.REFERRAL_SOURCES:
            problem = "referral_source must be BROWSER or APP"
        elif query.get(P.Q_SKIP_AGGREGATION, "false") not in {"true", "false"}:
            problem = "skip_aggregation must be true or false"
        elif P.Q_CLIENT_REDIRECT_URL in query and referral != P.REFERRAL_APP:
            problem = "client_redirect_url is only available with referral_source APP"
        elif endpoint == "platform" and P.Q_UI_MESSAGE_SCHEME in query and referral != "APP":
            problem = "ui_message_webview_url_scheme is only available with referral_source APP"
        if problem is not None:
            return self.error_response(400, 4001, problem, endpoint)

        guid = request.path_params["member_guid"]
        source = self._members()
        member = await run_in_threadpool(source.lookup, guid)
        if member is None or not member.belongs_to(user):
            return self.error_response(404, 4040, "Member not found", endpoint)
        if not member.is_oauth:
            return self.error_response(400, 4000, P.NOT_OAUTH_MESSAGE, endpoint)

        token = self._new_token()
        self._uris[token] = False
        self.stats["uris"] += 1
        passed = {k: v for k, v in query.items() if k != P.Q_SKIP_AGGREGATION}
        passed.setdefault(P.Q_REFERRAL_SOURCE, referral)
        answered = answered_guid(guid)
        uri = (
            f"{self.config.uri_base.rstrip('/')}/oauth/predirect_to/"
            f"{quote(answered, safe='')}/{token}?{urlencode(passed)}"
        )
        return self._ok({"member": {"guid": answered, "oauth_window_uri": uri}}, endpoint)

    async def open_uri(self, request: Request) -> Response:
        token = request.path_params["token"]
        if token not in self._uris:
            return PlainTextResponse("unknown link", status_code=404)
        if self._uris[token]:
            return PlainTextResponse("this link was used already", status_code=410)
        self._uris[token] = True
        return PlainTextResponse("sandbox: the OAuth flow would start here")

    # --- admin ---------------------------------------------------------------------------------
    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.config.to_dict())

    async def put_config(self, request: Request) -> Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            self.config.update(changes)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if "seed" in changes:
            self.rng.seed(self.config.seed)
        return JSONResponse(self.config.to_dict())

    async def get_requests(self, request: Request) -> Response:
        return JSONResponse(self.log.snapshot())

    async def clear_requests(self, request: Request) -> Response:
        self.log.clear()
        return Response(status_code=204)

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse({**self.stats, "active_sessions": len(self._sessions)})
