"""MX client package: fresh OAuth window URIs over the Nexus or Platform API.

Public interface (what the pipeline imports)::

    from worker.mx import OAuthRequest, OAuthWindow, MxClient, build_mx_client

    async with build_mx_client(settings) as mx:
        window = await mx.generate_oauth_window_uri(OAuthRequest(...))

Modules: :mod:`~worker.mx.types` (request/answer values), :mod:`~worker.mx.client` (the client),
:mod:`~worker.mx.params` (the wire contract), :mod:`~worker.mx.responses` (status/body → error),
:mod:`~worker.mx.transport` (aiohttp under httpx, exception translation),
:mod:`~worker.mx.sessions` (Nexus session cache), :mod:`~worker.mx.ratelimit` (global limit).
Errors are :mod:`worker.errors`' ``MxError`` tree; nothing else escapes.
"""

from worker.mx.client import MxClient, build_mx_client, query_params
from worker.mx.types import OAuthRequest, OAuthWindow

__all__ = ["MxClient", "OAuthRequest", "OAuthWindow", "build_mx_client", "query_params"]
