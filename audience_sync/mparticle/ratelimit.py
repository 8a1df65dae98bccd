"""A client-side budget of batches per second per feed key (default 270, SPEC §6.4).

A token bucket per key, shared by the senders of a process: ``reserve`` takes the batches of one
request now and says how long to wait before sending it, so a burst never exceeds one second's
budget. The clock is a parameter; the lock makes it safe across sender threads. A key can also be
held back until a time (a 429's Retry-After).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float
    blocked_until: float = 0.0


class BatchBudget:
    """``rate`` batches per second per key, bursting up to one second's worth."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str, batches: int, *, now: float) -> float:
        """Take ``batches`` from ``key``'s budget; return the seconds to wait before sending."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(tokens=self.rate, updated=now)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.rate, bucket.tokens + elapsed * self.rate)
            bucket.updated = max(bucket.updated, now)
            bucket.tokens -= batches
            wait = 0.0 if bucket.tokens >= 0 else -bucket.tokens / self.rate
            return max(wait, bucket.blocked_until - now)

    def block(self, key: str, *, until: float) -> None:
        """Hold ``key`` back until ``until`` (429 Retry-After)."""
        with self._lock:
            bucket = self._buckets.setdefault(key, _Bucket(tokens=self.rate, updated=0.0))
            bucket.blocked_until = max(bucket.blocked_until, until)

    def blocked_until(self, key: str) -> float:
        """When ``key`` may send again (0 when not held back)."""
        with self._lock:
            bucket = self._buckets.get(key)
            return bucket.blocked_until if bucket else 0.0
