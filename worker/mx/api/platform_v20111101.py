"""Platform API v20111101: ``Accept: application/vnd.mx.api.v1+json`` and
``Accept-Version: v20111101``.

The media type is MX's (OpenAPI, official SDKs). The ``Accept-Version`` value is **inferred, not
documented**: MX's migration guide requires the header on every Platform call after 2026-08-12
and documents ``v20250224`` for the newer version; ``v20111101`` is the version's own name. To be
checked in MX's integration environment (docs/MX.md). Paths take MX guids only.
"""

from __future__ import annotations

from typing import Final

from worker.mx.api.platform import PlatformDialect

VERSION: Final = "v20111101"
MEDIA_TYPE: Final = "application/vnd.mx.api.v1+json"


class PlatformV20111101(PlatformDialect):
    version = VERSION
    media_type = MEDIA_TYPE
    takes_partner_ids = False
