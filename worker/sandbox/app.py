"""The sandbox endpoints and MX-side state: SSO API tokens, Nexus sessions, OAuth window URIs,
members' live state.

Endpoints, all on one app and port (``/sso`` prefixes the SSO API):

* ``GET /sso/{client_id}/users/{user_id}/api_token[.json]`` with ``MD-API-KEY`` and
  ``Accept: application/vnd.moneydesktop.sso.v3+json``: a one-time API token, valid 10 minutes.
* ``POST /sessions`` with ``MD-API-TOKEN`` (consumed) and the Nexus media type: a session token
  for the token's user, with MX's 30-minute sliding expiry (and ``session_max_uses``).
* ``GET /members/{guid}/oauth_window_uri`` and ``GET /members/{guid}`` with
  ``MD-SESSION-TOKEN`` (Nexus).
* ``GET /users/{user}/members/{member}/oauth_window_uri`` and ``.../status`` with HTTP Basic
  and a Platform version: ``Accept: application/json`` + ``Accept-Version: v20250224``, or
  ``Accept: application/vnd.mx.api.v1+json`` + ``Accept-Version: v20111101`` (406 otherwise).
  v20250224 paths also take the partner's user and member ids.
* ``GET /oauth/predirect_to/{guid}/{token}``: "opens" a URI once (200), then 410: URIs are
  one-time (when ``uri_base`` points at the sandbox).
* Admin: ``GET|PUT /_sandbox/config``, ``GET|DELETE /_sandbox/requests``, ``GET /_sandbox/stats``,
  ``PUT|DELETE /_sandbox/members/{guid}`` (a member's live state).

Checks in order: credentials (401), media types and versions (406 for Accept/Accept-Version,
415 for Content-Type), then the request. Errors use the configured envelope, since MX's is
undocumented.
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
from worker.mx.api import platform_v20111101, platform_v20250224
from worker.sandbox import oauth_window
from worker.sandbox.config import SandboxConfig
from worker.sandbox.faults import FaultMiddleware, RequestLog
from worker.sandbox.members import (
    BLANK_URI_MARKER,
    FOREIGN_URI_MARKER,
    NO_USER_MARKER,
    MemberSource,
    SandboxMember,
    answered_guid,
    open_source,
)
from worker.sandbox.webhooks import WebhookSender, events_for

#: Platform ``Accept-Version`` → the ``Accept`` it goes with.
PLATFORM_MEDIA = {
    platform_v20250224.VERSION: platform_v20250224.MEDIA_TYPE,
    platform_v20111101.VERSION: platform_v20111101.MEDIA_TYPE,
}
#: How MX member guids start (partner ids, on v20250224 paths, do not).
GUID_PREFIX = "MBR-"
#: Platform versions whose paths take the partner's ids as well as guids.
PARTNER_ID_VERSIONS = frozenset({platform_v20250224.VERSION})
_MEDIA = {"sso": P.SSO_MEDIA_TYPE, "platform": platform_v20250224.MEDIA_TYPE}
#: Live-state fields a member override may set (``PUT /_sandbox/members/{guid}``).
STATE_FIELDS = frozenset(
    {"connection_status", "is_being_aggregated", "aggregated_at", "successfully_aggregated_at"}
)


@dataclass
class _Session:
    user: str
    expires_at: float
    uses: int = 0


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
        #: Live-state overrides per member guid (connection_status, aggregation fields).
        self.member_states: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, int] = {
            "api_tokens_issued": 0, "sessions_created": 0, "uris": 0, "authorized": 0,
        }  # fmt: skip
        #: The user each member was last asked under (webhooks name it).
        self.users: dict[str, str] = {}
        self.webhooks = WebhookSender(
            url=lambda: self.config.webhook_url or None,
            auth=lambda: (self.config.webhook_username, self.config.webhook_password),
            delays=lambda: [
                self.config.webhook_retry_seconds * 2**i for i in range(self.config.webhook_retries)
            ],
            duplicates=lambda: self.config.webhook_duplicates,
        )
        self._source: MemberSource | None = None
        self._source_key: tuple[str | None, str | None] | None = None
        routes = [
            Route("/sso/{client_id}/users/{user_id}/api_token", self.sso, methods=["GET"]),
            Route("/sso/{client_id}/users/{user_id}/api_token.json", self.sso, methods=["GET"]),
            Route("/sessions", self.create_session, methods=["POST"]),
            Route("/members/{member_guid}/oauth_window_uri", self.nexus_oauth, methods=["GET"]),
            Route("/members/{member_guid}", self.nexus_member, methods=["GET"]),
            Route(
                "/users/{user_guid}/members/{member_guid}/oauth_window_uri",
                self.platform_oauth,
                methods=["GET"],
            ),
            Route(
                "/users/{user_guid}/members/{member_guid}/status",
                self.platform_status,
                methods=["GET"],
            ),
            Route("/oauth/predirect_to/{member_guid}/{token}", self.open_uri, methods=["GET"]),
            Route(
                "/oauth/predirect_to/{member_guid}/{token}/decide",
                self.decide_uri,
                methods=["POST"],
            ),
            Route("/_sandbox/config", self.get_config, methods=["GET"]),
            Route("/_sandbox/config", self.put_config, methods=["PUT"]),
            Route("/_sandbox/requests", self.get_requests, methods=["GET"]),
            Route("/_sandbox/requests", self.clear_requests, methods=["DELETE"]),
            Route("/_sandbox/stats", self.get_stats, methods=["GET"]),
            Route("/_sandbox/members/{member_guid}", self.put_member, methods=["PUT"]),
            Route("/_sandbox/members/{member_guid}", self.delete_member, methods=["DELETE"]),
            Route("/_sandbox/webhooks/hold", self.hold_webhooks, methods=["POST"]),
            Route("/_sandbox/webhooks/release", self.release_webhooks, methods=["POST"]),
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

    def _ok(self, data: dict[str, Any], endpoint: str, version: str | None = None) -> Response:
        # A Platform answer comes in the media type of the version asked for.
        media = PLATFORM_MEDIA.get(version or "") or self.media_type(endpoint)
        return JSONResponse(data, media_type=media)

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
        user = request.path_params["user_id"]
        if not cfg.nexus_enabled:
            # MX documents 404 on the token read when Nexus is not enabled for the client.
            return self.error_response(404, None, "Not found", "sso")
        if NO_USER_MARKER in user:
            status = cfg.sso_user_failure_status
            return self.error_response(status, None, "User not found or disabled", "sso")
        token = self._new_token()
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
        session = self._nexus_session(request)
        if isinstance(session, Response):
            return session
        return await self._oauth_answer(request, session.user, "nexus")

    async def nexus_member(self, request: Request) -> Response:
        session = self._nexus_session(request)
        if isinstance(session, Response):
            return session
        return await self._member_answer(request, session.user, "nexus", None)

    def _nexus_session(self, request: Request) -> _Session | Response:
        """The live session of a Nexus call, or the error answer (401, 406, 415, 4011)."""
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
        session.uses += 1
        every = self.config.expire_session_every
        max_uses = self.config.session_max_uses
        if (
            session.expires_at < now
            or (every and self._nexus_calls % every == 0)
            or (max_uses and session.uses > max_uses)
        ):
            del self._sessions[token]
            return self.error_response(401, P.SESSION_EXPIRED_CODE, "Session expired", "nexus")
        session.expires_at = now + self.config.session_ttl_seconds  # sliding expiry
        return session

    # --- Platform ------------------------------------------------------------------------------
    async def platform_oauth(self, request: Request) -> Response:
        version = self._platform_version(request)
        if isinstance(version, Response):
            return version
        user = request.path_params["user_guid"]
        return await self._oauth_answer(request, user, "platform", version)

    async def platform_status(self, request: Request) -> Response:
        version = self._platform_version(request)
        if isinstance(version, Response):
            return version
        user = request.path_params["user_guid"]
        return await self._member_answer(request, user, "platform", version)

    def _platform_version(self, request: Request) -> str | Response:
        """The request's Platform version, or the error answer (401, 406)."""
        if not self._basic_ok(request.headers.get("authorization", "")):
            return self.error_response(401, None, "Invalid credentials", "platform")
        version = request.headers.get(P.HEADER_ACCEPT_VERSION, "").strip()
        accept = request.headers.get("accept", "")
        media = PLATFORM_MEDIA.get(version)
        if version not in self.config.platform_versions or media is None or media not in accept:
            # MX: "didn't specify a valid API version" (required since 2026-08-12).
            return self.error_response(
                406, None, "Not Acceptable: no valid API version", "platform"
            )
        return version

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
    async def _find(
        self, request: Request, user: str, endpoint: str, version: str | None
    ) -> SandboxMember | Response:
        """The member of the path, as MX would find it for ``user``, or the 404 answer."""
        guid = request.path_params["member_guid"]
        source = self._members()
        member = None
        if version in PARTNER_ID_VERSIONS and not guid.startswith(GUID_PREFIX):
            # v20250224 paths take "id or guid"; MX guids start with MBR-.
            member = await run_in_threadpool(source.lookup_id, guid)
        if member is None:
            member = await run_in_threadpool(source.lookup, guid)
        if member is None or not member.belongs_to(user):
            return self.error_response(404, 4040, "Member not found", endpoint)
        self.users[member.guid] = member.user_guid or user
        return member

    async def _oauth_answer(
        self, request: Request, user: str, endpoint: str, version: str | None = None
    ) -> Response:
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
        elif endpoint == "nexus" and P.Q_ENABLE_APP2APP in query:
            problem = "enable_app2app is not a Nexus parameter"
        elif endpoint == "platform" and query.get(P.Q_ENABLE_APP2APP, "true") not in {
            "true",
            "false",
        }:
            problem = "enable_app2app must be true or false"
        if problem is not None:
            return self.error_response(400, 4001, problem, endpoint)

        member = await self._find(request, user, endpoint, version)
        if isinstance(member, Response):
            return member
        if not member.is_oauth:
            return self.error_response(400, 4000, P.NOT_OAUTH_MESSAGE, endpoint)
        answered = answered_guid(member.guid)
        if BLANK_URI_MARKER in member.guid:
            # MX documents a blank URI for a member that cannot use OAuth.
            blank = {"member": {"guid": answered, "oauth_window_uri": None}}
            return self._ok(blank, endpoint, version)

        token = self._new_token()
        self._uris[token] = False
        self.stats["uris"] += 1
        passed = {k: v for k, v in query.items() if k != P.Q_SKIP_AGGREGATION}
        passed.setdefault(P.Q_REFERRAL_SOURCE, referral)
        base = self.config.uri_base
        if FOREIGN_URI_MARKER in member.guid:
            base = self.config.foreign_uri_base
        uri = (
            f"{base.rstrip('/')}/oauth/predirect_to/"
            f"{quote(answered, safe='')}/{token}?{urlencode(passed)}"
        )
        return self._ok({"member": {"guid": answered, "oauth_window_uri": uri}}, endpoint, version)

    async def _member_answer(
        self, request: Request, user: str, endpoint: str, version: str | None
    ) -> Response:
        member = await self._find(request, user, endpoint, version)
        if isinstance(member, Response):
            return member
        state: dict[str, Any] = {
            "connection_status": (
                self.config.default_connection_status
                if member.generated
                else member.connection_status
            ),
            "is_being_aggregated": member.is_being_aggregated,
            "aggregated_at": member.aggregated_at,
            "successfully_aggregated_at": member.successfully_aggregated_at,
        }
        state.update(self.member_states.get(member.guid, {}))
        body: dict[str, Any] = {"guid": answered_guid(member.guid), **state}
        if endpoint == "nexus":
            # Nexus members carry is_oauth; the Platform status object has is_authenticated.
            body["is_oauth"] = member.is_oauth
        else:
            body["is_authenticated"] = state["connection_status"] == "CONNECTED"
        return self._ok({"member": body}, endpoint, version)

    def set_member_state(self, guid: str, /, **fields: Any) -> None:
        """Override a member's live state (what the read endpoints answer).

        Raises:
            ValueError: a field that is not a live-state field.
        """
        unknown = set(fields) - STATE_FIELDS
        if unknown:
            raise ValueError(f"unknown member state field(s): {', '.join(sorted(unknown))}")
        before = self.member_states.get(guid, {}).get("connection_status")
        self.member_states.setdefault(guid, {}).update(fields)
        if fields.get("connection_status", before) != before:
            self._emit(guid)

    def _emit(self, guid: str) -> None:
        """Post MX's webhooks for the member's new live state (when a webhook URL is set and
        the member's user is known: it was asked for under one)."""
        user = self.users.get(guid)
        if user is not None:
            self.webhooks.send(events_for(guid, user, self.member_states.get(guid, {})))

    async def open_uri(self, request: Request) -> Response:
        """The OAuth window: one-time (a second open is 410, as MX URIs are single-use)."""
        token = request.path_params["token"]
        if token not in self._uris:
            return PlainTextResponse("unknown link", status_code=404)
        if self._uris[token]:
            return PlainTextResponse("this link was used already", status_code=410)
        self._uris[token] = True
        action = f"{request.url.path}/decide"
        if request.url.query:
            action += f"?{request.url.query}"
        return oauth_window.window(request.path_params["member_guid"], action)

    async def decide_uri(self, request: Request) -> Response:
        """Authorize or Cancel in the OAuth window; Authorize makes the member CONNECTED."""
        guid = request.path_params["member_guid"]
        if request.path_params["token"] not in self._uris:
            return PlainTextResponse("unknown link", status_code=404)
        authorized, referral, redirect = await oauth_window.decision(request)
        if authorized:
            self.member_states.setdefault(guid, {}).update(
                connection_status="CONNECTED", is_being_aggregated=False
            )
            self.stats["authorized"] += 1
            self._emit(guid)
        return oauth_window.finish(
            member_guid=guid, authorized=authorized, referral_source=referral,
            redirect_url=redirect,
        )  # fmt: skip

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

    async def put_member(self, request: Request) -> Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of member state fields")
            self.set_member_state(request.path_params["member_guid"], **changes)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(self.member_states[request.path_params["member_guid"]])

    async def hold_webhooks(self, request: Request) -> Response:
        self.webhooks.hold()
        return Response(status_code=204)

    async def release_webhooks(self, request: Request) -> Response:
        reverse = request.query_params.get("order") == "reverse"
        return JSONResponse({"released": self.webhooks.release(reverse=reverse)})

    async def delete_member(self, request: Request) -> Response:
        self.member_states.pop(request.path_params["member_guid"], None)
        return Response(status_code=204)
