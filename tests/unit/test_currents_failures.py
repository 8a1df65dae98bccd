"""A failed attempt for claimed mParticle batches (core/currents/failures.py), from a table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from audience_sync.core.currents.failures import plan_batch_failures
from audience_sync.core.retry import RetryPolicy

POLICY = RetryPolicy(base_s=2.0, cap_s=60.0, retry_window_s=3600.0, max_attempts=3)
NOW = 10_000.0
DEAD = "dead"


@dataclass(frozen=True)
class Batch:
    id: str
    attempts: int
    first_failure_at: float | None


@pytest.mark.parametrize(
    ("attempts", "first_failure_at", "due_in"),
    [
        (0, None, 1.0),  # first failure: the base delay, halved by jitter 0
        (1, NOW - 10, 2.0),
        (2, NOW - 10, 4.0),  # attempts spent, but not the window: retried
        (0, NOW - 90_000, 1.0),  # window spent, but not the attempts: retried
        (5, None, 30.0),  # a first failure time not known yet counts from now; capped delay
        (5, NOW - 3599, 30.0),
        (2, NOW - 3600, DEAD),  # both spent: gives up
        (9, NOW - 90_000, DEAD),
    ],
    ids=[
        "first",
        "second",
        "attempts-spent-only",
        "window-spent-only",
        "no-first-failure",
        "capped",
        "both-spent",
        "long-dead",
    ],
)
def test_a_batch_gives_up_only_when_both_budgets_are_spent(attempts, first_failure_at, due_in):
    batch = Batch("b1", attempts, first_failure_at)
    plan = plan_batch_failures([batch], POLICY, reason="internal_error", now=NOW, jitters=[0.0])
    if due_in == DEAD:
        assert plan.retries == {}
        assert plan.dead == {"b1": "gave_up: internal_error"}
    else:
        assert plan.dead == {}
        assert plan.retries == {"b1": (NOW + due_in, "internal_error")}


def test_each_batch_is_decided_alone_with_its_own_jitter():
    batches = [Batch("young", 0, None), Batch("old", 7, NOW - 7200), Batch("mid", 1, NOW - 5)]
    plan = plan_batch_failures(batches, POLICY, reason="http_503", now=NOW, jitters=[0.0, 0.5, 1.0])
    assert plan.dead == {"old": "gave_up: http_503"}
    assert plan.retries == {"young": (NOW + 1.0, "http_503"), "mid": (NOW + 4.0, "http_503")}


def test_one_jitter_per_batch():
    with pytest.raises(ValueError):
        plan_batch_failures([Batch("b", 0, None)], POLICY, reason="x", now=NOW, jitters=[])
