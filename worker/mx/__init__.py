"""MX client package: fresh OAuth window URIs and members' live state, over Nexus or Platform.

Public interface (what the pipeline imports)::

    from worker.mx import MemberRequest, MemberState, MxClient, OAuthRequest, OAuthWindow
    from worker.mx import build_mx_client

    async with build_mx_client(settings) as mx:
        window = await mx.generate_oauth_window_uri(OAuthRequest(...))
        state = await mx.read_member(MemberRequest(member_guid=..., user_guid=...))

Modules: :mod:`~worker.mx.types` (request/answer values), :mod:`~worker.mx.client` (the client),
:mod:`~worker.mx.api` (one module per MX API version: paths, headers, parameters, answers),
:mod:`~worker.mx.params` (shared wire names, SSO/Nexus constants), :mod:`~worker.mx.responses`
(status/body → error), :mod:`~worker.mx.uri` (is a URI safe to hand out),
:mod:`~worker.mx.health` (one user's refusal vs the whole client's),
:mod:`~worker.mx.transport` (aiohttp under httpx, exception translation),
:mod:`~worker.mx.sessions` (Nexus session cache), :mod:`~worker.mx.ratelimit` (global limit).
Errors are :mod:`worker.errors`' ``MxError`` tree; nothing else escapes.
"""

from worker.mx.client import MxClient, build_mx_client
from worker.mx.types import MemberRequest, MemberState, OAuthRequest, OAuthWindow

__all__ = [
    "MemberRequest",
    "MemberState",
    "MxClient",
    "OAuthRequest",
    "OAuthWindow",
    "build_mx_client",
]
