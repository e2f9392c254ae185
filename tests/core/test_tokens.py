"""Reconnect and state tokens: round trip, rotation, tampering, expiry, purpose separation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core import tokens
from worker.core.tokens import RECONNECT, STATE, TokenError, TokenExpired

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
K1, K2 = b"k" * 32, b"j" * 32


def test_round_trip_and_rotation() -> None:
    """The first key signs; any listed key verifies, so old links survive a rotation."""
    nid = uuid.uuid4()
    token = tokens.sign(RECONNECT, nid, NOW + timedelta(days=7), K1)
    assert len(token) == 54
    assert tokens.verify(RECONNECT, token, [K2, K1], NOW).id == nid
    with pytest.raises(TokenError):
        tokens.verify(RECONNECT, token, [K2], NOW)


def test_expired_is_told_apart_only_after_the_signature() -> None:
    token = tokens.sign(RECONNECT, uuid.uuid4(), NOW, K1)
    with pytest.raises(TokenExpired):
        tokens.verify(RECONNECT, token, [K1], NOW)
    with pytest.raises(TokenError) as info:
        tokens.verify(RECONNECT, token, [K2], NOW)
    assert not isinstance(info.value, TokenExpired)


def test_a_reconnect_token_is_not_a_state() -> None:
    token = tokens.sign(RECONNECT, uuid.uuid4(), NOW + timedelta(hours=1), K1)
    with pytest.raises(TokenError):
        tokens.verify(STATE, token, [K1], NOW)


@given(st.integers(min_value=0, max_value=53), st.sampled_from("AQgw_-9"))
def test_any_changed_character_is_refused(position: int, char: str) -> None:
    token = tokens.sign(RECONNECT, uuid.UUID(int=7), NOW + timedelta(days=1), K1)
    tampered = token[:position] + char + token[position + 1 :]
    if tampered == token:
        return
    with pytest.raises(TokenError):
        tokens.verify(RECONNECT, tampered, [K1], NOW)


@pytest.mark.parametrize("junk", ["", "x", "%%%", "a" * 200, "MBR-123", "../../etc/passwd"])
def test_junk_is_refused(junk: str) -> None:
    with pytest.raises(TokenError):
        tokens.verify(RECONNECT, junk, [K1], NOW)
