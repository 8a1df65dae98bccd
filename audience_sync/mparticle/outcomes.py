"""What an Events API answer means (SPEC §6.4), as a value: the sender acts on it."""

from __future__ import annotations

import email.utils
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_RETRY_AFTER_S = 1.0
"""When a 429 carries no usable Retry-After."""
MAX_RETRY_AFTER_S = 3600.0


class Kind(StrEnum):
    ACCEPTED = "accepted"
    BAD_REQUEST = "bad_request"  # 400: split to isolate; a lone bad batch is dead-lettered
    TOO_LARGE = "too_large"  # 413: split
    AUTH = "auth"  # 401/403: pause the feed (credentials expired)
    NOT_FOUND = "not_found"  # 404/405/415: wrong URL: pause the feed, report
    RATE_LIMITED = "rate_limited"  # 429: wait Retry-After, not an attempt
    TRANSIENT = "transient"  # 5xx, timeout, connection: backoff


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """``retry_after_s`` for RATE_LIMITED; ``message`` is mParticle's (or the transport's)."""

    kind: Kind
    reason: str
    message: str = ""
    retry_after_s: float | None = None


def retry_after_s(headers: Mapping[str, str], *, now: float) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), bounded."""
    raw = headers.get("retry-after", "").strip()
    if not raw:
        return DEFAULT_RETRY_AFTER_S
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        value = when.timestamp() - now
    if value != value:  # NaN
        return DEFAULT_RETRY_AFTER_S
    return min(max(value, 0.0), MAX_RETRY_AFTER_S)


def _message(body: t.Any) -> str:
    if isinstance(body, Mapping):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for err in errors[:5]:
                if isinstance(err, Mapping):
                    parts.append(str(err.get("message") or err.get("code") or err))
                else:
                    parts.append(str(err))
            return "; ".join(parts)[:500]
        for key in ("message", "error"):
            if body.get(key):
                return str(body[key])[:500]
    if isinstance(body, str):
        return body[:500]
    return ""


def classify(
    status: int | None,
    headers: Mapping[str, str],
    body: t.Any,
    *,
    error: str | None,
    now: float,
) -> Outcome:
    """Classify one ``/v2/bulkevents`` answer."""
    if status is None:
        return Outcome(kind=Kind.TRANSIENT, reason=error or "no_answer")
    if 200 <= status < 300:
        return Outcome(kind=Kind.ACCEPTED, reason="accepted")
    message = _message(body)
    if status == 400:
        return Outcome(kind=Kind.BAD_REQUEST, reason="bad_request", message=message)
    if status == 413:
        return Outcome(kind=Kind.TOO_LARGE, reason="too_large", message=message)
    if status in (401, 403):
        return Outcome(kind=Kind.AUTH, reason=f"auth_{status}", message=message)
    if status in (404, 405, 415):
        return Outcome(kind=Kind.NOT_FOUND, reason=f"http_{status}", message=message)
    if status == 429:
        return Outcome(
            kind=Kind.RATE_LIMITED,
            reason="rate_limited",
            message=message,
            retry_after_s=retry_after_s(headers, now=now),
        )
    return Outcome(kind=Kind.TRANSIENT, reason=f"http_{status}", message=message)
