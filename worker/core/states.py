"""Typed states stored as strings: the outbox row's status (member states are in policy)."""

from __future__ import annotations

from enum import StrEnum


class NotificationStatus(StrEnum):
    """Lifecycle of an outbox row: pending → sent | dead | canceled."""

    PENDING = "pending"
    SENT = "sent"
    DEAD = "dead"
    #: The member's episode ended (OAuth succeeded, or it is no longer eligible) before delivery.
    CANCELED = "canceled"
