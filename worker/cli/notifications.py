"""``reauth notifications``: inspect the outbox, follow the stream, revive dead notifications.

On-call commands only; delivery itself is the relay's job (``reauth.dispatch_notifications``).
No command prints an ``oauth_window_uri``: it is a one-time credential for the user's bank
login, so output shows its host and a fingerprint instead (the same one the logs use).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from models.notification import Notification
from worker.cli import app
from worker.cli.output import console, db_session, print_json, safe, setup
from worker.core.states import NotificationStatus
from worker.errors import ConfigError, InputError, StorageError
from worker.logging import fingerprint_uri
from worker.store import notifications

notifications_app = typer.Typer(
    help="The notification outbox: list rows, follow the Redis stream, retry dead ones."
)
app.add_typer(notifications_app, name="notifications")

STATUSES = tuple(s.value for s in NotificationStatus)
#: Longest single XREAD block, so --timeout and Ctrl-C are honoured promptly.
MAX_BLOCK_MS = 1000


def _redacted(payload: dict[str, Any]) -> dict[str, Any]:
    out = dict(payload)
    uri = out.get("oauth_window_uri")
    if isinstance(uri, str):
        out["oauth_window_uri"] = fingerprint_uri(uri)
    return out


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row(n: Notification) -> dict[str, Any]:
    payload = n.payload or {}
    uri = payload.get("oauth_window_uri")
    return {
        "id": str(n.id),
        "status": n.status,
        "attempts": n.attempts,
        "member_guid": payload.get("member_guid"),
        "episode": payload.get("episode"),
        "reminder": payload.get("reminder"),
        "reason": payload.get("reason"),
        # A purged link keeps only its fingerprint (worker.service.retention).
        "link": fingerprint_uri(uri)
        if isinstance(uri, str)
        else payload.get("oauth_window_uri_fingerprint"),
        "generated_at": payload.get("generated_at"),
        "created_at": _iso(n.created_at),
        "next_attempt_at": _iso(n.next_attempt_at),
        "sent_at": _iso(n.sent_at),
        "last_error": n.last_error,
        # REAUTH_NOTIFY_GROUPING=user: the id of the message it went (or goes) out in.
        "group_id": str(n.group_id) if n.group_id is not None else None,
    }


@notifications_app.command("list")
def list_notifications(
    status: str | None = typer.Option(
        None, "--status", help="Only rows in this status: pending, sent, dead or canceled."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="At most this many rows."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """List outbox rows, newest first, with counts per status."""
    if status is not None and status not in STATUSES:
        raise InputError(f"--status must be one of {', '.join(STATUSES)}; got {status!r}")
    with db_session(setup(quiet=True)) as session:
        rows = [
            _row(r)
            for r in notifications.recent(session, status=status, member_guid=None, limit=limit)
        ]
        counts = notifications.counts_by_status(session)
    if json_out:
        print_json({"counts": counts, "notifications": rows})
        return
    table = Table(title="notifications (newest first)")
    for column in ("id", "status", "att", "member", "ep/rem", "created", "next", "error"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r["id"],
            r["status"],
            str(r["attempts"]),
            safe(r["member_guid"]),
            f"{r['episode']}/{r['reminder']}",
            r["created_at"] or "",
            r["next_attempt_at"] or r["sent_at"] or "",
            safe(r["last_error"] or ""),
        )
    console.print(table)
    console.print(", ".join(f"{s}: {c}" for s, c in counts.items()))


def _parse_ids(ids: list[str]) -> list[uuid.UUID]:
    parsed, bad = [], []
    for raw in ids:
        try:
            parsed.append(uuid.UUID(raw))
        except ValueError:
            bad.append(raw)
    if bad:
        raise InputError(f"not a notification id (UUID): {', '.join(bad)}")
    return parsed


@notifications_app.command("retry-dead")
def retry_dead(
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Only this notification (repeatable). Default: every dead one."),
    ] = None,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Put dead notifications back to pending with their attempts reset.

    The relay's next sweep delivers them; a link that aged meanwhile is regenerated first. With
    --id, every id must exist and be dead, otherwise nothing is changed.
    """
    wanted = _parse_ids(ids or [])
    with db_session(setup(quiet=True)) as session:
        if wanted:
            found = notifications.statuses(session, wanted)
            unknown = [str(i) for i in wanted if i not in found]
            not_dead = [
                f"{i} ({found[i]})"
                for i in wanted
                if i in found and found[i] != NotificationStatus.DEAD
            ]
            if unknown or not_dead:
                problems = []
                if unknown:
                    problems.append(f"unknown: {', '.join(unknown)}")
                if not_dead:
                    problems.append(f"not dead: {', '.join(not_dead)}")
                raise InputError("nothing changed; " + "; ".join(problems))
        revived = notifications.requeue(session, wanted or None)
    revived_ids = sorted(str(i) for i in revived)
    if json_out:
        print_json({"count": len(revived_ids), "retried": revived_ids})
    else:
        console.print(f"{len(revived_ids)} dead notification(s) put back to pending")


@notifications_app.command("tail")
def tail(
    count: int | None = typer.Option(
        None, "--count", "-n", min=1, help="Exit after this many messages."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", min=0, help="Exit after this many seconds. Default: follow until ^C."
    ),
    from_start: bool = typer.Option(
        False, "--from-start", help="Replay the stream from its oldest entry, not only new ones."
    ),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Follow the notification stream (REAUTH_NOTIFY_STREAM) as messages arrive.

    Reads without a consumer group, so it never takes messages from real consumers.
    """
    import redis

    from worker.redis_options import client_options

    settings = setup(quiet=True)
    if settings.redis_url is None:
        raise ConfigError("notifications tail needs REAUTH_REDIS_URL")
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5, **client_options()
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        last_id = "0-0" if from_start else _last_id(client, settings.notify_stream)
        while count is None or seen < count:
            block_ms = MAX_BLOCK_MS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                block_ms = max(1, min(MAX_BLOCK_MS, int(remaining * 1000)))
            want = None if count is None else count - seen
            reply: Any = client.xread({settings.notify_stream: last_id}, count=want, block=block_ms)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    _print_entry(last_id, fields, json_out=json_out)
                    seen += 1
    except KeyboardInterrupt:
        pass
    except redis.RedisError as exc:
        raise StorageError(f"redis: {exc.__class__.__name__}: {exc}") from exc
    finally:
        client.close()


def _last_id(client: Any, stream: str) -> str:
    newest = client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def _print_entry(entry_id: str, fields: dict[bytes, bytes], *, json_out: bool) -> None:
    raw = fields.get(b"payload", b"{}")
    try:
        payload: dict[str, Any] = json.loads(raw)
    except ValueError:
        payload = {"unreadable": True}
    shown = _redacted(payload)
    if json_out:
        print(json.dumps({"stream_id": entry_id, **shown}, sort_keys=True), flush=True)
        return
    console.print(
        safe(
            f"{entry_id}  {shown.get('id')}  member={shown.get('member_guid')} "
            f"reason={shown.get('reason')} ep/rem={shown.get('episode')}/{shown.get('reminder')} "
            f"channel={shown.get('channel')} link={shown.get('oauth_window_uri')}"
        )
    )
