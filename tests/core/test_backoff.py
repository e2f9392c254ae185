"""Properties of the pure retry delay in :mod:`worker.core.backoff` (used after MX and sink
failures)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.backoff import MIN_DELAY, RETRY_AFTER_CAP, backoff_delay

attempts = st.integers(min_value=1, max_value=200)
seconds = st.integers(min_value=1, max_value=7200).map(lambda s: timedelta(seconds=s))
retry_afters = st.none() | st.floats(min_value=-10, max_value=10**9, allow_nan=False)


@given(attempt=attempts, base=seconds, cap=seconds, retry_after=retry_afters, seed=st.integers())
def test_delay_is_bounded(
    attempt: int, base: timedelta, cap: timedelta, retry_after: float | None, seed: int
) -> None:
    """Never below the floor; never above max(cap, floor) or the Retry-After cap (a day)."""
    delay = backoff_delay(
        attempt, base=base, cap=cap, retry_after=retry_after, rng=random.Random(seed)
    )
    assert MIN_DELAY <= delay <= max(cap, MIN_DELAY, RETRY_AFTER_CAP if retry_after else cap)
    if not retry_after or retry_after <= 0:
        assert delay <= max(cap, MIN_DELAY)


@given(
    attempt=attempts,
    base=seconds,
    cap=seconds,
    retry_after=st.floats(0.001, 10**9),
    seed=st.integers(),
)
def test_delay_never_undercuts_retry_after_up_to_the_cap(
    attempt: int, base: timedelta, cap: timedelta, retry_after: float, seed: int
) -> None:
    """MX's Retry-After is honoured up to a day, so a hostile value cannot park a member forever."""
    delay = backoff_delay(
        attempt, base=base, cap=cap, retry_after=retry_after, rng=random.Random(seed)
    )
    assert delay >= min(timedelta(seconds=retry_after), RETRY_AFTER_CAP)


@given(attempt=st.integers(min_value=1, max_value=60), base=seconds, cap=seconds)
def test_ceiling_is_monotone_in_attempts(attempt: int, base: timedelta, cap: timedelta) -> None:
    """With the draw at its maximum, the delay never shrinks as attempts grow."""

    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    first = backoff_delay(attempt, base=base, cap=cap, rng=Top())
    second = backoff_delay(attempt + 1, base=base, cap=cap, rng=Top())
    assert first <= second


@given(attempt=attempts, seed=st.integers())
def test_same_seed_same_delay(attempt: int, seed: int) -> None:
    """The function is pure: the same inputs and RNG state give the same delay."""
    assert backoff_delay(attempt, rng=random.Random(seed)) == backoff_delay(
        attempt, rng=random.Random(seed)
    )


def test_attempt_below_one_is_refused() -> None:
    """Attempt numbers start at 1."""
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0)
