"""The signed webhook sink: Standard Webhooks signatures, status handling, isolation of failures.

Signatures are checked with the reference ``standardwebhooks`` library, as a receiver would.
Delivery tests use a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from notify_helpers import NOW, Receiver, add_notification, get_row
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from worker.config import Settings
from worker.core.retry_after import parse_retry_after
from worker.errors import ConfigError, SinkPermanentError, SinkTransientError
from worker.notify.relay import deliver_batch
from worker.notify.sinks import build_sink
from worker.notify.webhook import (
    MAX_RETRY_AFTER,
    WebhookSink,
    classify,
    sign,
    signed_headers,
    signing_key,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
MESSAGE = {"id": "6f1c2c1e-4a4e-4a43-9a5e-1b8d3f7f0a11", "type": "reauth.oauth_link"}


def test_signature_verifies_with_standardwebhooks() -> None:
    """A request we sign is accepted by the reference verifier, which returns the JSON."""
    body = json.dumps(MESSAGE)
    headers = signed_headers(signing_key(SECRET), MESSAGE["id"], body, now=datetime.now(UTC))
    assert headers["webhook-id"] == MESSAGE["id"]
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == MESSAGE


def test_tampered_body_fails_verification() -> None:
    """Changing one byte of the body breaks the signature."""
    body = json.dumps(MESSAGE)
    headers = signed_headers(signing_key(SECRET), MESSAGE["id"], body, now=datetime.now(UTC))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("oauth", "0auth"), headers)


def test_old_timestamp_fails_verification() -> None:
    """A request signed ten minutes ago is rejected as a replay (the library allows 5 min)."""
    body = json.dumps(MESSAGE)
    old = datetime.now(UTC) - timedelta(minutes=10)
    headers = signed_headers(signing_key(SECRET), MESSAGE["id"], body, now=old)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, headers)


def test_raw_secret_is_used_as_its_utf8_bytes() -> None:
    """A secret without ``whsec_`` is the raw key; receivers verify with ``secret.encode()``."""
    raw = "not-base64-just-a-passphrase!"
    body = json.dumps(MESSAGE)
    headers = signed_headers(signing_key(raw), MESSAGE["id"], body, now=datetime.now(UTC))
    assert Webhook(raw.encode()).verify(body, headers) == MESSAGE


#: Signatures the hand-written HMAC code produced before signing moved to the standardwebhooks
#: library (id and body of MESSAGE, compact JSON, timestamp 2026-03-02T09:00:00Z).
GOLDEN_TIMESTAMP = 1772442000
GOLDEN_BODY = '{"id":"6f1c2c1e-4a4e-4a43-9a5e-1b8d3f7f0a11","type":"reauth.oauth_link"}'
GOLDEN = [
    (SECRET, "v1,KUqT7j5btOJt40Iepg3iAb66kZZP952Ii+GMMzUfk20="),
    ("not-base64-just-a-passphrase!", "v1,0xaWVUuPCFAh4e4aAqyUPap76DCCIIfwvQkF5Zm8KAs="),
]


@pytest.mark.parametrize(("secret", "expected"), GOLDEN, ids=["whsec", "raw"])
def test_signatures_are_unchanged_by_the_library(secret: str, expected: str) -> None:
    """Signing through ``standardwebhooks`` gives today's signatures, for a ``whsec_`` and for a
    raw secret (the library is handed the key bytes, so it never base64-decodes a raw one)."""
    key = signing_key(secret)
    assert sign(key, MESSAGE["id"], GOLDEN_TIMESTAMP, GOLDEN_BODY) == expected
    at = datetime.fromtimestamp(GOLDEN_TIMESTAMP, UTC)
    headers = signed_headers(key, MESSAGE["id"], GOLDEN_BODY, now=at)
    assert headers["webhook-signature"] == expected
    assert headers["webhook-timestamp"] == str(GOLDEN_TIMESTAMP)


@pytest.mark.parametrize("secret", ["whsec_not*base64", ""])
def test_unusable_secret_is_a_config_error(secret: str) -> None:
    """A malformed whsec_ secret or an empty one is refused up front, naming the variable."""
    with pytest.raises(ConfigError, match="REAUTH_WEBHOOK_SECRET"):
        signing_key(secret)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (204, None),
        (301, SinkPermanentError),
        (400, SinkPermanentError),
        (404, SinkPermanentError),
        (410, SinkPermanentError),
        (408, SinkTransientError),
        (429, SinkTransientError),
        (500, SinkTransientError),
        (503, SinkTransientError),
    ],
)
def test_status_classification(status: int, expected: type[Exception] | None) -> None:
    """2xx delivered; 408/429/5xx transient; any other status permanent (dead at once)."""
    result = classify(httpx.Response(status))
    assert (type(result.error) if result.error else None) is expected


def test_retry_after_seconds_are_passed_on() -> None:
    """A 429's Retry-After (seconds form) reaches the relay; an HTTP date in the past asks for
    no wait."""
    assert classify(httpx.Response(429, headers={"retry-after": "120"})).retry_after == 120
    dated = httpx.Response(503, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert classify(dated).retry_after is None


RETRY_NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", None),  # no wait asked: the relay's own backoff applies
        ("99999999", 3600.0),  # capped at an hour
        ("9" * 400, 3600.0),  # float() makes this inf: still capped, no error
        ("Mon, 02 Mar 2026 09:02:00 GMT", 120.0),  # an HTTP date, against the sink's clock
        ("Mon, 02 Mar 2026 08:00:00 GMT", None),  # a date that has passed
        ("Mon, 02 Mar 2026 09:02:00 -0000", None),  # no usable zone
        ("-5", None),
        ("1e3", None),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_forms(value: str, seconds: float | None) -> None:
    """The shared parser (worker.core.retry_after) as the webhook sink uses it: delta-seconds
    or an HTTP date, at most MAX_RETRY_AFTER; anything else asks for nothing."""
    response = httpx.Response(503, headers={"retry-after": value})
    assert classify(response, now=lambda: RETRY_NOW).retry_after == seconds


@given(st.one_of(st.none(), st.text(max_size=60), st.integers().map(str), st.floats().map(str)))
def test_retry_after_parser_never_raises(value: str | None) -> None:
    """Whatever a receiver (or MX) sends: None or a number of seconds in (0, cap]."""
    seconds = parse_retry_after(value, lambda: RETRY_NOW, cap=MAX_RETRY_AFTER)
    assert seconds is None or 0 < seconds <= MAX_RETRY_AFTER


def test_delivered_request_is_signed_and_carries_the_message(receiver: Receiver) -> None:
    """End to end over HTTP: the receiver gets the JSON body with verifiable headers."""
    sink = WebhookSink(receiver.url, SECRET, timeout=2)
    try:
        assert sink.deliver([MESSAGE])[0].delivered
    finally:
        sink.close()
    (got,) = receiver.received
    assert got.headers["content-type"] == "application/json"
    assert got.headers["webhook-id"] == MESSAGE["id"]
    assert Webhook(SECRET).verify(got.body, got.headers) == MESSAGE


def test_connection_refused_is_transient() -> None:
    """No server listening: a transient error, and the message text carries no URL."""
    sink = WebhookSink("http://127.0.0.1:1/hook?token=abc", SECRET, timeout=1)
    try:
        (result,) = sink.deliver([MESSAGE])
    finally:
        sink.close()
    assert isinstance(result.error, SinkTransientError)
    assert "token" not in str(result.error)


def test_slow_receiver_times_out_without_holding_up_the_batch(receiver: Receiver) -> None:
    """One request that hangs costs at most the timeout; the others are delivered meanwhile."""
    receiver.respond = lambda m: -1 if m["id"] == "slow" else 204
    sink = WebhookSink(receiver.url, SECRET, timeout=0.5)
    started = time.monotonic()
    try:
        results = sink.deliver([{"id": "a"}, {"id": "slow"}, {"id": "b"}])
    finally:
        receiver.release.set()
        sink.close()
    assert time.monotonic() - started < 2
    assert [r.delivered for r in results] == [True, False, True]
    assert isinstance(results[1].error, SinkTransientError)
    assert "timeout" in str(results[1].error)


def test_endpoint_answering_500_ends_dead_while_others_are_delivered(
    db_url: str,
    sessions: sessionmaker[Session],
    receiver: Receiver,
    settings_for: Callable[..., Settings],
) -> None:
    """Through the relay: the notification whose endpoint keeps answering 500 is retried with
    backoff and ends dead after notify_max_attempts; the other notifications are sent on the
    first run and never delivered again."""
    settings = settings_for(
        db_url,
        notify_sink="webhook",
        webhook_url=receiver.url,
        allow_insecure_urls=True,  # the receiver serves plain http on loopback
        webhook_secret=SECRET,
        webhook_timeout=2,
        notify_max_attempts=3,
        backoff_cap=timedelta(minutes=1),
    )
    bad = add_notification(sessions, member_guid="MBR-500")
    good = [add_notification(sessions) for _ in range(3)]
    receiver.respond = lambda m: 500 if m["member_guid"] == "MBR-500" else 200
    sink = build_sink(settings)
    assert isinstance(sink, WebhookSink)
    try:
        now = NOW
        runs = []
        for _ in range(4):
            runs.append(
                deliver_batch(settings=settings, sessions=sessions, sink=sink, now=now, owner="r")
            )
            now += timedelta(minutes=2)
    finally:
        sink.close()

    assert [(r.sent, r.retried, r.dead) for r in runs] == [
        (3, 1, 0),
        (0, 1, 0),
        (0, 0, 1),
        (0, 0, 0),
    ]
    assert all(get_row(sessions, g).status == "sent" for g in good)
    row = get_row(sessions, bad)
    assert (row.status, row.attempts, row.last_error) == (
        "dead",
        3,
        "SinkTransientError: webhook answered 500",
    )
    ids = [r.message["id"] for r in receiver.received]
    assert ids.count(str(bad)) == 3
    assert all(ids.count(str(g)) == 1 for g in good)
