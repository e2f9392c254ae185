"""Platform API v20250224: ``Accept: application/json`` and ``Accept-Version: v20250224``.

Both are required (MX's OpenAPI ``acceptVersion`` parameter; since 2026-08-12 every Platform
call without a valid version gets 406). Paths take the partner's own user and member ids as well
as MX guids ("id or guid"); the client uses ids only with REAUTH_MX_PLATFORM_PATH_IDS=partner.
"""

from __future__ import annotations

from typing import Final

from worker.mx.api.platform import PlatformDialect

VERSION: Final = "v20250224"
MEDIA_TYPE: Final = "application/json"


class PlatformV20250224(PlatformDialect):
    version = VERSION
    media_type = MEDIA_TYPE
    takes_partner_ids = True
