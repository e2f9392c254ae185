"""SQLAlchemy models. Importing this package registers every table on ``Base.metadata``."""

from models.attempt import Attempt
from models.audit import Lock, OpsAction, ScanRun
from models.base import Base, UTCDateTime
from models.click import Click
from models.funnel import Episode, FunnelEvent
from models.member import Member
from models.notification import Notification
from models.webhook_event import WebhookEvent

__all__ = [
    "Attempt",
    "Base",
    "Click",
    "Episode",
    "FunnelEvent",
    "Lock",
    "Member",
    "Notification",
    "OpsAction",
    "ScanRun",
    "UTCDateTime",
    "WebhookEvent",
]
