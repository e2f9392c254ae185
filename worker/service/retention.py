"""Retention: the purge run by beat (``reauth.purge``) and by hand (``reauth purge``).

Two things, each in batches of ``REAUTH_RETENTION_BATCH_SIZE`` rows, one short transaction per
batch, oldest first through an index:

1. **Links.** A sent notification's ``oauth_window_uri`` is a one-time credential for the
   person's bank login. ``REAUTH_LINK_MAX_AGE`` after delivery it can no longer be useful, so the
   stored payload's ``oauth_window_uri`` becomes null and its fingerprint (the one the logs use)
   is kept as ``oauth_window_uri_fingerprint``; every other field stays. A member's own copy of
   its last URI is nulled ``2 x REAUTH_LINK_MAX_AGE`` after it was generated (a link is
   delivered at most ``REAUTH_LINK_MAX_AGE`` after generation, else it is regenerated); its
   fingerprint is the one on the notification that carried it.
2. **Rows.** Each kind (``REAUTH_RETENTION_*``) older than its retention is deleted; 0 keeps a
   kind forever. Pending notifications and members are never purged.

A run may stop at a deadline (the beat task's share of the task time limit); the next run goes
on where it stopped, since every batch has committed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from worker.config import Settings
from worker.logging import fingerprint_uri
from worker.runtime import Runtime
from worker.store import retention
from worker.store.db import read_only_session, session_scope

log = structlog.get_logger(__name__)
Clock = Callable[[], datetime]

#: The payload key that keeps a cleared link's fingerprint.
FINGERPRINT_KEY = "oauth_window_uri_fingerprint"


@dataclass
class KindResult:
    """What a purge did (or, dry, would do) to one kind."""

    name: str
    #: None: kept forever (retention 0).
    cutoff: datetime | None
    rows: int = 0
    batches: int = 0
    #: Rows of the largest batch (never above the batch size).
    max_batch: int = 0

    def add(self, n: int) -> None:
        self.rows += n
        self.batches += 1
        self.max_batch = max(self.max_batch, n)


@dataclass
class PurgeResult:
    dry_run: bool
    batch_size: int
    links: KindResult
    member_links: KindResult
    kinds: list[KindResult] = field(default_factory=list)
    #: False when the run stopped at its deadline with work left.
    complete: bool = True
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for item in [out["links"], out["member_links"], *out["kinds"]]:
            item["cutoff"] = item["cutoff"].isoformat() if item["cutoff"] else None
        return out


def retention_of(settings: Settings, kind: str) -> timedelta:
    """The retention setting of ``kind`` (``REAUTH_RETENTION_<KIND>``)."""
    value = getattr(settings, f"retention_{kind}")
    assert isinstance(value, timedelta)
    return value


def cleared_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its link replaced by the link's fingerprint (other fields unchanged)."""
    out = dict(payload)
    uri = out.get("oauth_window_uri")
    if isinstance(uri, str):
        out[FINGERPRINT_KEY] = fingerprint_uri(uri)
    out["oauth_window_uri"] = None
    return out


def purge(
    rt: Runtime,
    *,
    clock: Clock,
    dry_run: bool = False,
    deadline: float | None = None,
) -> PurgeResult:
    """Clear old links and delete old rows, batch by batch, until done or ``deadline``
    (a :func:`time.monotonic` value)."""
    started = time.monotonic()
    settings = rt.settings
    now = clock()
    size = settings.retention_batch_size
    result = PurgeResult(
        dry_run=dry_run,
        batch_size=size,
        links=KindResult("links", now - settings.link_max_age),
        member_links=KindResult("member_links", now - 2 * settings.link_max_age),
    )
    for name in retention.KINDS:
        keep = retention_of(settings, name)
        result.kinds.append(KindResult(name, now - keep if keep else None))

    if dry_run:
        with read_only_session(rt.engine) as s:
            result.links.rows = retention.count_sent_links(s, _cut(result.links))
            result.member_links.rows = retention.count_member_links(s, _cut(result.member_links))
            for k in result.kinds:
                if k.cutoff is not None:
                    k.rows = retention.count_older(s, retention.KINDS[k.name], k.cutoff)
        result.elapsed_s = round(time.monotonic() - started, 3)
        return result

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def batches(item: KindResult, one: Callable[[], int]) -> bool:
        """Run batches until one comes back short; False when the deadline stopped it."""
        while True:
            if out_of_time():
                return False
            n = one()
            item.add(n)
            if n < size:
                return True

    def links_batch() -> int:
        with session_scope(rt.sessions) as s:
            rows = retention.sent_links(s, _cut(result.links), size)
            cleared = [retention.SentLink(r.id, cleared_payload(r.payload)) for r in rows]
            return retention.clear_links(s, cleared, now)

    def member_links_batch() -> int:
        with session_scope(rt.sessions) as s:
            return retention.clear_member_links(s, _cut(result.member_links), size)

    def delete_batch(kind: retention.Kind, cutoff: datetime) -> Callable[[], int]:
        def one() -> int:
            with session_scope(rt.sessions) as s:
                return retention.delete_batch(s, kind, cutoff, size)

        return one

    work: list[tuple[KindResult, Callable[[], int]]] = [
        (result.links, links_batch),
        (result.member_links, member_links_batch),
    ]
    work += [(k, delete_batch(retention.KINDS[k.name], k.cutoff)) for k in result.kinds if k.cutoff]
    for item, one in work:
        if not batches(item, one):
            result.complete = False
            break
    result.elapsed_s = round(time.monotonic() - started, 3)
    log.info(
        "purge_done",
        complete=result.complete,
        elapsed_s=result.elapsed_s,
        links_cleared=result.links.rows,
        member_links_cleared=result.member_links.rows,
        **{f"deleted_{k.name}": k.rows for k in result.kinds},
    )
    return result


def _cut(item: KindResult) -> datetime:
    assert item.cutoff is not None
    return item.cutoff
