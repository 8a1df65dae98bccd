from __future__ import annotations

import pytest

from audience_sync.core.retry import RetryPolicy, backoff_s, decide_retry

NOW = 1_700_000_000.0
POLICY = RetryPolicy(base_s=2, cap_s=3600, retry_window_s=86400, max_attempts=12)


@pytest.mark.parametrize(
    ("attempts", "jitter", "expected"),
    [(1, 0.999999, 2.0), (1, 0.0, 1.0), (2, 0.0, 2.0), (5, 0.999999, 32.0), (30, 0.0, 1800.0)],
    ids=["first-full", "first-half", "second-half", "fifth", "capped"],
)
def test_backoff_is_exponential_jittered_and_capped(attempts, jitter, expected):
    assert backoff_s(POLICY, attempts, jitter) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("attempts", "age_s", "gives_up"),
    [
        (12, 86400, True),
        (12, 86399, False),  # attempts spent, window not
        (11, 90000, False),  # window spent, attempts not
        (1, 0, False),
        (100, 10**6, True),
    ],
    ids=["both-spent", "window-left", "attempts-left", "first", "long-dead"],
)
def test_gives_up_only_when_window_and_attempts_are_both_spent(attempts, age_s, gives_up):
    decision = decide_retry(
        POLICY, attempts=attempts, first_failure_at=NOW - age_s, now=NOW, jitter=0.5
    )
    assert decision.gives_up is gives_up
    if not gives_up:
        assert decision.retry_at > NOW
