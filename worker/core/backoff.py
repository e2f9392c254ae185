"""Pure retry timing: exponential backoff with full jitter, capped, honouring Retry-After.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of many
members that failed together, so a recovering MX is not hit by a synchronised wave. A floor keeps
the first retry from being immediate, and Retry-After is never undercut.
"""

from __future__ import annotations

import random
from datetime import timedelta

#: Never retry sooner than this, whatever the draw.
MIN_DELAY = timedelta(seconds=5)
#: A Retry-After is honoured up to this long (a hostile value cannot park a member for a year).
RETRY_AFTER_CAP = timedelta(days=1)


def backoff_delay(
    attempt: int,
    *,
    base: timedelta = timedelta(seconds=30),
    cap: timedelta = timedelta(hours=1),
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before retry number ``attempt`` (1 = the first retry).

    The ceiling is ``base * 2**(attempt-1)`` capped at ``cap``; the delay is drawn uniformly from
    ``[MIN_DELAY, ceiling]`` and raised to ``retry_after`` seconds when MX sent one (honoured up
    to :data:`RETRY_AFTER_CAP`, so a hostile Retry-After cannot park a member for a year).

    With the defaults the first retry comes within 30 s, the fifth within 8 minutes.

    Raises:
        ValueError: ``attempt`` is below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    draw: float = (rng or random).random()
    # 2**min(...) keeps the exponent bounded so huge attempt numbers cannot overflow.
    ceiling = min(cap, base * (2 ** min(attempt - 1, 32)))
    ceiling = max(ceiling, MIN_DELAY)
    delay: timedelta = MIN_DELAY + (ceiling - MIN_DELAY) * draw
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(timedelta(seconds=retry_after), RETRY_AFTER_CAP))
    return delay
