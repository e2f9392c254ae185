"""Retry-After (RFC 9110, section 10.2.3): the one parser of the header, pure.

Both forms are read: delta-seconds (``120``; a decimal fraction is tolerated) and an HTTP-date
(``Wed, 21 Oct 2015 07:28:00 GMT``), the latter against the clock the caller passes in. Each
caller (the MX client, the webhook sink) chooses its own cap, so a hostile value cannot park
work for a year.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime

#: delta-seconds is digits only; no sign, exponent, ``inf`` or ``nan`` (float() takes those).
_DELTA_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")


def parse_retry_after(
    value: str | None, now: Callable[[], datetime], *, cap: float
) -> float | None:
    """Seconds to wait from a Retry-After value, at most ``cap``.

    ``None`` when the header is absent or unusable, or asks for no wait (zero, or a date that
    has passed): the caller then falls back to its own backoff. ``now`` is called only for the
    date form, and must return an aware datetime.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)  # a string of 400 digits is inf here: capped below
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # "-0000": the spec's dates are GMT; a zone-less one is unusable
            return None
        seconds = (when - now()).total_seconds()
    if math.isnan(seconds) or seconds <= 0:
        return None
    return min(seconds, cap)
