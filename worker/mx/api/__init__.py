"""MX API versions behind one seam: one module per version, chosen from settings.

* :mod:`~worker.mx.api.nexus`: Nexus (per-user sessions from the SSO API);
* :mod:`~worker.mx.api.platform_v20250224`: Platform API v20250224 (the default);
* :mod:`~worker.mx.api.platform_v20111101`: Platform API v20111101;
* :mod:`~worker.mx.api.base`: what a version provides (:class:`Dialect`) and shared readers;
* :mod:`~worker.mx.api.platform`: what the Platform versions share.

Adding a version (for example MX's announced 2026 "Create OAuth Authorization URL" endpoint,
whose path and shape are not public yet) means one module implementing
:class:`~worker.mx.api.base.Dialect` and one line in :data:`PLATFORM_VERSIONS`.
"""

from __future__ import annotations

from worker.config import MxApi, MxApiVersion, PathIds, Settings
from worker.mx.api.base import Auth, Call, Dialect, WindowFields
from worker.mx.api.nexus import NexusDialect, SessionFlow
from worker.mx.api.platform import PlatformDialect
from worker.mx.api.platform_v20111101 import PlatformV20111101
from worker.mx.api.platform_v20250224 import PlatformV20250224

#: ``REAUTH_MX_API_VERSION`` value → Platform dialect class.
PLATFORM_VERSIONS: dict[str, type[PlatformDialect]] = {
    PlatformV20250224.version: PlatformV20250224,
    PlatformV20111101.version: PlatformV20111101,
}


def dialect_for(settings: Settings) -> Dialect:
    """The dialect for ``REAUTH_MX_API`` (and ``REAUTH_MX_API_VERSION`` on Platform)."""
    # Enum() again: settings built with model_copy(update=...) may hold plain strings.
    if MxApi(settings.mx_api) is MxApi.NEXUS:
        return NexusDialect(
            base_url=settings.mx_base_url,
            sso_base_url=settings.mx_sso_base_url,
            client_id=settings.mx_client_id,
        )
    cls = PLATFORM_VERSIONS[MxApiVersion(settings.mx_api_version).value]
    return cls(
        base_url=settings.mx_base_url,
        app2app=settings.app2app,
        partner_ids=PathIds(settings.mx_platform_path_ids) is PathIds.PARTNER,
    )


__all__ = [
    "PLATFORM_VERSIONS",
    "Auth",
    "Call",
    "Dialect",
    "NexusDialect",
    "PlatformDialect",
    "SessionFlow",
    "WindowFields",
    "dialect_for",
]
