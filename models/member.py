"""The ``members`` table: MX member state this service needs, plus its own re-auth state.

MX fields (``connection_status``, ``oauth_status`` ...) are written by imports and by
``reauth oauth-result``; the re-auth fields are written only by the pipeline.

``next_attempt_at`` is the member's next due time: NULL means "nothing to do", so the due query
reads a partial index whose size is the number of members with work ahead, not the table.
Anything that changes a member's MX state must set ``next_attempt_at`` to now (the repository's
upsert does), so the next scan re-evaluates it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, BigId, TimestampMixin


class Member(TimestampMixin, Base):
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    member_guid: Mapped[str] = mapped_column(String(64), unique=True)
    user_guid: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str | None] = mapped_column(String(128))
    institution_code: Mapped[str] = mapped_column(String(128), index=True)
    #: The bank's name for people (the reconnect page); falls back to the code.
    institution_name: Mapped[str | None] = mapped_column(String(128))
    is_oauth: Mapped[bool] = mapped_column(Boolean, default=False)
    connection_status: Mapped[str | None] = mapped_column(String(32))
    oauth_status: Mapped[str | None] = mapped_column(String(16))
    oauth_error_reason: Mapped[str | None] = mapped_column(String(32))
    oauth_started_at: Mapped[datetime | None]
    successfully_aggregated_at: Mapped[datetime | None]
    is_being_aggregated: Mapped[bool] = mapped_column(Boolean, default=False)
    channel: Mapped[str] = mapped_column(String(8), default="BROWSER")

    # --- this service's state -------------------------------------------------------------
    #: idle | pending | awaiting_user | gave_up | not_oauth_capable | gone
    reauth_state: Mapped[str] = mapped_column(String(24), default="idle", index=True)
    #: revoked | expired | abandoned while an episode is open
    reauth_reason: Mapped[str | None] = mapped_column(String(16))
    episode: Mapped[int] = mapped_column(Integer, default=0)
    episode_started_at: Mapped[datetime | None]
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    #: attempts spent on the current reminder
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claim_owner: Mapped[str | None] = mapped_column(String(64))
    claim_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    #: MX answered with another member guid than the one asked for
    mx_member_guid: Mapped[str | None] = mapped_column(String(64))
    oauth_window_uri: Mapped[str | None] = mapped_column(Text)
    uri_generated_at: Mapped[datetime | None]

    __table_args__ = (
        # reauth forget --user; one person's members.
        Index("ix_members_user_guid", "user_guid"),
        # Members still holding a link: the purge clears the oldest first.
        Index(
            "ix_members_live_link",
            "uri_generated_at",
            postgresql_where=text("oauth_window_uri IS NOT NULL"),
            sqlite_where=text("oauth_window_uri IS NOT NULL"),
        ),
        Index(
            "ix_members_due",
            "next_attempt_at",
            "id",
            # The claim filter's column rides in the index, so PostgreSQL answers the due query
            # with an index-only scan in (next_attempt_at, id) order: no heap visit, no sort.
            postgresql_include=["claim_expires_at"],
            postgresql_where=text("next_attempt_at IS NOT NULL"),
            sqlite_where=text("next_attempt_at IS NOT NULL"),
        ),
    )

    def __repr__(self) -> str:
        return f"<Member {self.member_guid} state={self.reauth_state} episode={self.episode}>"
