"""When to try a failed delivery again, and when to give up (SPEC §5.3). Pure.

A user is dead-lettered only when BOTH the retry window and the attempt budget are spent, so
neither a burst of fast failures nor one slow outage alone gives up on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; settings ``delivery.*``."""

    base_s: float = 2.0
    cap_s: float = 3600.0
    retry_window_s: float = 86400.0
    max_attempts: int = 12


@dataclass(frozen=True, kw_only=True)
class RetryDecision:
    """``retry_at`` is the epoch second of the next attempt, or None to give up."""

    retry_at: float | None

    @property
    def gives_up(self) -> bool:
        """Whether the user goes to the dead-letter store."""
        return self.retry_at is None


def backoff_s(policy: RetryPolicy, attempts: int, jitter: float) -> float:
    """Delay before attempt ``attempts + 1``; ``jitter`` in [0, 1) spreads retries over
    [half, full] of the capped exponential delay so failed batches do not return in lockstep."""
    exponent = min(max(attempts - 1, 0), 62)
    delay = min(policy.cap_s, policy.base_s * (2.0**exponent))
    return delay * (0.5 + 0.5 * jitter)


def decide_retry(
    policy: RetryPolicy,
    *,
    attempts: int,
    first_failure_at: float,
    now: float,
    jitter: float,
) -> RetryDecision:
    """Decide after a failure; ``attempts`` counts failures so far, this one included."""
    window_spent = now - first_failure_at >= policy.retry_window_s
    attempts_spent = attempts >= policy.max_attempts
    if window_spent and attempts_spent:
        return RetryDecision(retry_at=None)
    return RetryDecision(retry_at=now + backoff_s(policy, attempts, jitter))
