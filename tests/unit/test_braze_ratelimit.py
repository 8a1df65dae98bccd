"""RateBudget with an injected clock: the 1-second budget, pauses, header steering, fairness."""

from __future__ import annotations

import bisect
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.braze.ratelimit import ARRIVAL_MARGIN, RateBudget

WINDOW = 1.0 + ARRIVAL_MARGIN

EPOCH = 1_700_000_000.0


class FakeClock:
    """Monotonic and wall clocks that only move when told to (wall = EPOCH + monotonic)."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now - 100.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def budget(clock: FakeClock, rps: float) -> RateBudget:
    return RateBudget(rps, clock=clock.monotonic, wall=clock.wall)


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """Most send times in any half-open window [t, t + window)."""
    times = sorted(times)
    return max(
        (bisect.bisect_left(times, t + window, lo=i) - i for i, t in enumerate(times)), default=0
    )


def test_first_burst_of_one_second_goes_now_then_waits(clock):
    b = budget(clock, 5)
    assert [b.reserve("k") for _ in range(5)] == [0, 0, 0, 0, 0]
    # One window is 1 s plus the arrival margin.
    assert b.reserve("k") == pytest.approx(WINDOW)
    assert b.reserve("k") == pytest.approx(WINDOW)
    clock.advance(0.4)
    assert b.reserve("k") == pytest.approx(WINDOW - 0.4)


def test_sustained_rate_matches_budget(clock):
    b = budget(clock, 10)
    slots = []
    for _ in range(100):
        slots.append(clock.now + b.reserve("k"))
    # 100 requests at 10/s: the last goes 9 windows after the first.
    assert slots[-1] - slots[0] == pytest.approx(9 * WINDOW)
    assert max_in_any_window(slots) == 10


def test_a_token_bucket_double_burst_is_not_allowed(clock):
    """After idling, a full second's burst goes, but the next second cannot add another."""
    b = budget(clock, 4)
    clock.advance(10)
    first = [clock.now + b.reserve("k") for _ in range(4)]
    clock.advance(0.5)
    more = [clock.now + b.reserve("k") for _ in range(4)]
    assert max_in_any_window(first + more) == 4


def test_below_one_per_second_spaces_requests(clock):
    b = budget(clock, 0.5)
    assert b.reserve("k") == 0
    assert b.reserve("k") == pytest.approx(2.0 * WINDOW)


@settings(max_examples=150, deadline=None)
@given(
    rps=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.floats(0, 0.7, allow_nan=False), st.integers(0, 6)), min_size=1, max_size=60
    ),
)
def test_property_never_more_than_budget_in_any_second(rps, steps):
    clock = FakeClock()
    b = budget(clock, rps)
    slots = []
    for advance, count in steps:
        clock.advance(advance)
        for _ in range(count):
            wait = b.reserve("k")
            assert wait >= 0
            slots.append(clock.now + wait)
    assert slots == sorted(slots)
    assert max_in_any_window(slots) <= rps


def test_pause_holds_the_key_until_the_epoch(clock):
    b = budget(clock, 1000)
    b.pause("k", clock.wall() + 5)
    assert b.paused_until("k") == pytest.approx(clock.wall() + 5)
    assert b.reserve("k") == pytest.approx(5)
    clock.advance(5.1)
    assert b.paused_until("k") is None


def test_pause_never_shortens(clock):
    b = budget(clock, 1000)
    b.pause("k", clock.wall() + 10)
    b.pause("k", clock.wall() + 2)
    assert b.paused_until("k") == pytest.approx(clock.wall() + 10)


def test_keys_are_independent(clock):
    b = budget(clock, 2)
    b.pause("paused", clock.wall() + 60)
    assert b.reserve("paused") == pytest.approx(60)
    assert b.paused_until("other") is None
    assert [b.reserve("other") for _ in range(2)] == [0, 0]
    assert b.reserve("third") == 0


def test_headers_with_low_remaining_spread_the_rest_until_reset(clock):
    b = budget(clock, 1000)
    b.observe(
        "k", {"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "20", "X-RateLimit-Reset": "2"}
    )
    waits = [b.reserve("k") for _ in range(5)]
    # 20 requests left for 2 seconds: one every 0.1 s.
    assert waits == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])


def test_headers_with_epoch_reset(clock):
    b = budget(clock, 1000)
    reset = str(int(clock.wall() + 4))
    b.observe(
        "k", {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "8", "x-ratelimit-reset": reset}
    )
    b.reserve("k")
    assert b.reserve("k") == pytest.approx(0.5)


def test_headers_with_nothing_remaining_hold_until_reset(clock):
    b = budget(clock, 1000)
    b.observe(
        "k", {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "3"}
    )
    assert b.paused_until("k") == pytest.approx(clock.wall() + 3)
    assert b.reserve("k") == pytest.approx(3)


def test_steering_ends_at_reset_and_when_remaining_recovers(clock):
    b = budget(clock, 1000)
    low = {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "10", "x-ratelimit-reset": "1"}
    b.observe("k", low)
    b.reserve("k")
    assert b.reserve("k") == pytest.approx(0.1)
    clock.advance(2)
    assert b.reserve("k") == 0
    assert b.reserve("k") == 0
    b.observe("k", low)
    b.observe(
        "k",
        {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "2900", "x-ratelimit-reset": "3"},
    )
    assert b.reserve("k") == 0
    assert b.reserve("k") == 0


def test_plenty_remaining_or_missing_headers_do_not_slow_down(clock):
    b = budget(clock, 1000)
    b.observe(
        "k",
        {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "2999", "x-ratelimit-reset": "3"},
    )
    b.observe("k", {})
    b.observe("k", {"x-ratelimit-remaining": "nonsense"})
    assert [b.reserve("k") for _ in range(10)] == [0] * 10


def test_key_never_appears_in_logs(clock, caplog):
    b = budget(clock, 10)
    with caplog.at_level("DEBUG"):
        b.pause("secret-rest-key", clock.wall() + 5)
        b.observe("secret-rest-key", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "3"})
    assert caplog.records
    for record in caplog.records:
        assert "secret-rest-key" not in record.getMessage()
        assert "secret-rest-key" not in str(vars(record))


def test_invalid_rate_rejected():
    with pytest.raises(ValueError):
        RateBudget(0)


def test_thread_safe_reservations_never_exceed_budget():
    """Real clock, 8 threads: reserved slots still respect the 1-second budget."""
    b = RateBudget(50)
    slots: list[float] = []
    lock = threading.Lock()
    import time

    def worker():
        for _ in range(25):
            now = time.monotonic()
            wait = b.reserve("k")
            with lock:
                slots.append(now + wait)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(slots) == 200
    # Allow for the microseconds between reading the clock here and inside reserve().
    assert max_in_any_window(slots, window=0.999) <= 50


@pytest.mark.parametrize(
    ("rps", "processes", "per_window"),
    [(10, 1, 10), (10, 2, 5), (10, 3, 3), (10, 20, 1), (1000, 4, 250)],
    ids=["alone", "two", "three-rounds-down", "more-than-the-budget", "default-four"],
)
def test_a_shared_budget_keeps_to_its_share(clock, rps, processes, per_window):
    b = budget(clock, rps)
    b.share_with(processes)
    slots = [clock.now + b.reserve("k") for _ in range(per_window * 5)]
    assert max_in_any_window(slots) == per_window


def test_sharing_applies_to_keys_already_in_use_and_can_grow_back(clock):
    b = budget(clock, 10)
    first = [clock.now + b.reserve("k") for _ in range(10)]
    b.share_with(2)
    later = [clock.now + b.reserve("k") for _ in range(10)]
    assert max_in_any_window(first + later) == 10
    assert max_in_any_window(later) == 5
    b.share_with(1)
    clock.advance(100)
    assert [b.reserve("k") for _ in range(10)] == [0] * 10
