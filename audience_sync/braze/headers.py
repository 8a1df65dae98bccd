"""Read Braze's rate-limit headers (pure; ``now`` is always a parameter).

Braze sends ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset``, and on a
429 ``X-Ratelimit-Retry-After`` (seconds) or ``Retry-After`` (seconds or an HTTP-date). ``reset``
is epoch seconds on some contracts and seconds remaining on others: a value larger than any
rate-limit window is an epoch (SPEC §5.2). Header names arrive in any case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

RESET_EPOCH_THRESHOLD_S = 3600.0
"""A ``x-ratelimit-reset`` above this many seconds is an epoch second, not seconds remaining
(Braze windows are at most an hour long; epoch seconds are in the billions)."""


def normalize_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Return ``headers`` with lower-case names (the last of duplicates wins)."""
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def parse_number(value: str | None) -> float | None:
    """A finite, non-negative number from a header value, or ``None``."""
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


def reset_at(value: str | None, now: float) -> float | None:
    """Epoch second at which the window of ``x-ratelimit-reset: value`` ends, or ``None``."""
    number = parse_number(value)
    if number is None:
        return None
    if number > RESET_EPOCH_THRESHOLD_S:
        return number
    return now + number


def _http_date(value: str) -> float | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def retry_after_at(headers: Mapping[str, str], now: float) -> float | None:
    """Epoch second a 429 asks us to wait for, from its headers, or ``None`` if none says.

    Order: ``x-ratelimit-retry-after`` (seconds), ``retry-after`` (seconds or HTTP-date),
    then ``x-ratelimit-reset`` (either meaning). Never earlier than ``now``.
    """
    lower = normalize_headers(headers)
    for name in ("x-ratelimit-retry-after", "retry-after"):
        raw = lower.get(name)
        if raw is None:
            continue
        seconds = parse_number(raw)
        if seconds is not None:
            return now + seconds
        if name == "retry-after":
            moment = _http_date(raw)
            if moment is not None:
                return max(now, moment)
    reset = reset_at(lower.get("x-ratelimit-reset"), now)
    if reset is not None:
        return max(now, reset)
    return None
