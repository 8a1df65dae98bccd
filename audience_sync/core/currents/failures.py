"""A failed attempt for claimed mParticle batches: each batch's next try, or its dead letter
(SPEC §6.4, §6.5). Pure.

Every failure that spends an attempt goes through here: 5xx, timeouts and dropped connections,
and an unexpected error while a feed's batches were delivered. A batch gives up only when both
the retry window (``currents.retention_s``) and the attempt budget are spent, under the one
retry policy of every sender (:mod:`audience_sync.core.retry`).
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audience_sync.core.retry import RetryPolicy, decide_retry


class AttemptedBatch(t.Protocol):
    """A claimed batch as the retry decision sees it (the store's ``ClaimedBatch``)."""

    @property
    def id(self) -> str: ...

    @property
    def attempts(self) -> int: ...

    @property
    def first_failure_at(self) -> float | None: ...


@dataclass(frozen=True, kw_only=True)
class BatchFailures:
    """What one failed attempt does to each batch.

    Attributes:
        retries: batch id -> (when it is due again, the reason kept with it).
        dead: batch id -> the dead-letter reason (``gave_up: <reason>``).
    """

    retries: Mapping[str, tuple[float, str]]
    dead: Mapping[str, str]


def plan_batch_failures(
    batches: Sequence[AttemptedBatch],
    policy: RetryPolicy,
    *,
    reason: str,
    now: float,
    jitters: Sequence[float],
) -> BatchFailures:
    """One more attempt for each batch, failed for ``reason``; ``jitters`` holds one value in
    [0, 1) per batch."""
    retries: dict[str, tuple[float, str]] = {}
    dead: dict[str, str] = {}
    for batch, jitter in zip(batches, jitters, strict=True):
        decision = decide_retry(
            policy,
            attempts=batch.attempts + 1,
            first_failure_at=batch.first_failure_at or now,
            now=now,
            jitter=jitter,
        )
        if decision.retry_at is None:
            dead[batch.id] = f"gave_up: {reason}"
        else:
            retries[batch.id] = (decision.retry_at, reason)
    return BatchFailures(retries=retries, dead=dead)
