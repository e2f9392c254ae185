"""Example consumer of reauth notifications from the Redis stream (docs/NOTIFICATIONS.md).

Reads with a consumer group (several instances share the work; an entry a crashed instance
read but never acknowledged is taken over), handles both message types:

* ``reauth.oauth_link``: one member (``REAUTH_NOTIFY_GROUPING=member``, and with ``user`` a
  person with one member due),
* ``reauth.oauth_links``: several members of one person (``REAUTH_NOTIFY_GROUPING=user``),

and dedupes on the message ``id`` (stable across redeliveries, for both types), acknowledging
an entry only once it is handled: at least once in, once out.

Run it (``send`` here prints one line per message, never a link)::

    python docs/examples/consumer.py --redis-url redis://localhost:6379/0 --once

Needs only ``redis`` (redis-py). Replace :func:`send` with your email / push / in-app code.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

SINGLE = "reauth.oauth_link"
GROUPED = "reauth.oauth_links"
SEEN_TTL = 7 * 86400  # keep handled ids a week: far longer than any redelivery
IDLE_MS = 60_000  # take over entries another instance left unacknowledged this long


@dataclass(frozen=True)
class Link:
    """One broken bank connection to tell the person about."""

    member_guid: str
    institution_code: str
    reason: str  # revoked | expired | abandoned | oauth_failed; treat unknown ones as revoked
    channel: str  # BROWSER (email is fine) | APP (send to the app)
    url: str  # reconnect_url when present (asks MX at click time), else oauth_window_uri
    episode: int
    reminder: int


#: What to do with one person's links: (user_guid, links) -> None; raise to retry later.
Send = Callable[[str, list[Link]], None]


def links(message: dict[str, Any]) -> tuple[str, list[Link]]:
    """The person and the links of a message of either type; ValueError for anything else."""
    kind, version = message.get("type"), message.get("version")
    if version != 1 or kind not in (SINGLE, GROUPED):
        raise ValueError(f"unsupported message {kind} v{version}")
    members = message["members"] if kind == GROUPED else [message]
    return message["user_guid"], [
        Link(
            member_guid=m["member_guid"],
            institution_code=m["institution_code"],
            reason=m["reason"],
            channel=m["channel"],
            url=m.get("reconnect_url") or m["oauth_window_uri"],
            episode=m["episode"],
            reminder=m["reminder"],
        )
        for m in members
    ]


def handle(client: redis.Redis, message: dict[str, Any], send: Send, *, prefix: str) -> bool:
    """Send a message unless its id was handled before; True when it was sent now."""
    user_guid, found = links(message)
    key = f"{prefix}:seen:{message['id']}"
    # SET NX succeeds only the first time: the dedupe on ``id``.
    if not client.set(key, 1, nx=True, ex=SEEN_TTL):
        return False
    try:
        send(user_guid, found)
    except BaseException:
        client.delete(key)  # not handled after all: let the redelivery try again
        raise
    return True


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    try:
        # "0": a new group starts at the beginning of the stream; "$" would skip history.
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):  # the group exists already: fine
            raise


def consume(
    client: redis.Redis,
    send: Send,
    *,
    stream: str,
    group: str,
    consumer: str,
    once: bool = False,
    block_ms: int = 5000,
) -> int:
    """Handle entries until interrupted (or, with ``once``, until none are left); returns how
    many messages were sent (duplicates and unsupported ones are acknowledged, not sent)."""
    ensure_group(client, stream, group)
    sent = 0
    while True:
        # First entries a crashed instance read but never acknowledged, then new ones.
        reply: Any = client.xautoclaim(stream, group, consumer, min_idle_time=IDLE_MS, count=100)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = list(reply[1])
        fresh: Any = client.xreadgroup(
            group, consumer, {stream: ">"}, count=100, block=None if once else block_ms
        )
        for _stream, batch in fresh or []:
            entries.extend(batch)
        if not entries and once:
            return sent
        for entry_id, fields in entries:
            message = json.loads(fields[b"payload"])
            try:
                sent += handle(client, message, send, prefix=group)
            except ValueError as exc:  # a type or version we don't know: park it, don't guess
                print(f"skipped {entry_id.decode()}: {exc}", file=sys.stderr)
            client.xack(stream, group, entry_id)  # only after handling: at least once


def send(user_guid: str, found: list[Link]) -> None:
    """Stands for your email / push code: one notice per person, never the link itself."""
    banks = ", ".join(f"{link.institution_code} ({link.reason})" for link in found)
    print(f"notify {user_guid}: reconnect {banks}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    parser.add_argument("--stream", default="reauth:notifications")
    parser.add_argument("--group", default="email-service", help="one group per service")
    parser.add_argument("--consumer", default=socket.gethostname(), help="one per instance")
    parser.add_argument("--once", action="store_true", help="stop when the stream is drained")
    args = parser.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    try:
        count = consume(
            client,
            send,
            stream=args.stream,
            group=args.group,
            consumer=args.consumer,
            once=args.once,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
    print(f"sent {count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
