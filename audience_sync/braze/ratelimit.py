"""The client-side request budget per Braze REST key (SPEC §5.2), thread-safe.

Three things decide when the next request on a key may go:

1. **The budget**: at most ``N = floor(requests_per_second)`` requests in any window of one
   second (a sliding window over reserved send times, so a burst of one second's budget is
   allowed but the rate never exceeds the budget over any 1 s window, which a plain token bucket
   with burst ``N`` would allow to double).
2. **Steering by Braze's headers**: when ``x-ratelimit-remaining`` falls under
   :data:`LOW_REMAINING_FRACTION` of ``x-ratelimit-limit``, the remaining requests are spread
   evenly until ``x-ratelimit-reset``; at 0 nothing goes until the reset.
3. **Pauses**: after a 429 nothing goes on that key until the given epoch second.

Keys are independent: a paused or steered key never delays another, and :meth:`reserve` never
sleeps, so it never blocks a thread. Keys may be the REST key itself or its fingerprint; logs
only ever show :func:`~audience_sync.braze.keys.fingerprint` of it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from audience_sync.braze.headers import normalize_headers, parse_number, reset_at
from audience_sync.braze.keys import fingerprint

log = logging.getLogger(__name__)

WINDOW_S = 1.0
"""Length of the sliding window the budget is counted over, in seconds."""

ARRIVAL_MARGIN = 0.05
"""Share of the window added as slack: Braze counts requests when they arrive, and network
jitter can bring two sends that left exactly one window apart closer together."""

LOW_REMAINING_FRACTION = 0.1
"""Below this share of ``x-ratelimit-limit`` left, spread the rest until the reset."""


@dataclass
class _KeyState:
    slots: deque[float] = field(default_factory=deque)  # reserved send times (monotonic)
    paused_until: float = 0.0  # monotonic
    spacing_s: float = 0.0  # minimum gap between sends while steering
    spacing_until: float = 0.0  # monotonic end of steering (the reset)


class RateBudget:
    """Reserve send slots per REST key so no key ever exceeds its budget.

    Args:
        requests_per_second: ``braze.requests_per_second``; more than 0. Below 1, one request
            per ``1 / requests_per_second`` seconds.
        clock: monotonic seconds (injected in tests).
        wall: epoch seconds, to convert Braze's epoch deadlines to ``clock`` time.
    """

    def __init__(
        self,
        requests_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not requests_per_second > 0:
            raise ValueError(f"requests_per_second must be > 0, got {requests_per_second}")
        self.requests_per_second = float(requests_per_second)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}
        self.shares = 1
        self._set_rate(self.requests_per_second)

    def _set_rate(self, rate: float) -> None:
        # N requests per window; below 1 rps the window stretches so N stays 1.
        self._burst = max(1, math.floor(rate + 1e-9))
        self._window = max(WINDOW_S, self._burst / rate) * (1 + ARRIVAL_MARGIN)

    def share_with(self, processes: int) -> None:
        """Keep to ``1 / processes`` of the budget: Braze counts requests per key, not per
        process, and every live sending process may send on every key (SPEC §5.2)."""
        processes = max(1, processes)
        with self._lock:
            if processes == self.shares:
                return
            self.shares = processes
            self._set_rate(self.requests_per_second / processes)
            for state in self._keys.values():
                while len(state.slots) > self._burst:
                    state.slots.popleft()
        log.info(
            "rate budget shared",
            extra={
                "action": "braze_budget_shared",
                "processes": processes,
                "requests_per_second": round(self.requests_per_second / processes, 3),
            },
        )

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def _to_clock(self, epoch: float) -> float:
        return epoch - self._wall() + self._clock()

    def reserve(self, key: str) -> float:
        """Reserve the next send slot on ``key``; return seconds to wait before sending (0: now).

        The slot is taken whether or not the caller then sends.
        """
        with self._lock:
            now = self._clock()
            state = self._state(key)
            slot = max(now, state.paused_until)
            slots = state.slots
            if slots:
                slot = max(slot, slots[-1])
                if state.spacing_s and slot < state.spacing_until:
                    slot = max(slot, slots[-1] + state.spacing_s)
            if len(slots) >= self._burst:
                # The N-th previous send must have left the window [slot - window, slot].
                slot = max(slot, slots[-self._burst] + self._window)
            slots.append(slot)
            while len(slots) > self._burst:
                slots.popleft()
            return slot - now

    def observe(self, key: str, headers: Mapping[str, str]) -> None:
        """Steer ``key`` by a response's ``x-ratelimit-limit/-remaining/-reset`` headers."""
        lower = normalize_headers(headers)
        limit = parse_number(lower.get("x-ratelimit-limit"))
        remaining = parse_number(lower.get("x-ratelimit-remaining"))
        if remaining is None:
            return
        with self._lock:
            now_wall = self._wall()
            reset = reset_at(lower.get("x-ratelimit-reset"), now_wall)
            state = self._state(key)
            if reset is None or reset <= now_wall:
                return
            until = self._to_clock(reset)
            if remaining < 1:
                if until > state.paused_until:
                    state.paused_until = until
                    log.info(
                        "braze rate limit exhausted; holding key until reset",
                        extra={
                            "action": "braze_rate_limit_exhausted",
                            "key": fingerprint(key),
                            "wait_s": round(reset - now_wall, 3),
                        },
                    )
                return
            low = limit is not None and remaining < max(1.0, LOW_REMAINING_FRACTION * limit)
            if low:
                state.spacing_s = (reset - now_wall) / remaining
                state.spacing_until = until
            elif state.spacing_s:
                state.spacing_s = 0.0
                state.spacing_until = 0.0

    def pause(self, key: str, until_epoch: float) -> None:
        """Send nothing on ``key`` until ``until_epoch`` (a 429); never shortens a pause."""
        with self._lock:
            state = self._state(key)
            until = self._to_clock(until_epoch)
            if until > state.paused_until:
                state.paused_until = until
                log.info(
                    "braze key paused",
                    extra={
                        "action": "braze_rate_limited",
                        "key": fingerprint(key),
                        "wait_s": round(until_epoch - self._wall(), 3),
                    },
                )

    def paused_until(self, key: str) -> float | None:
        """The epoch second ``key`` is paused until, or ``None`` if it is not paused now."""
        with self._lock:
            state = self._keys.get(key)
            now = self._clock()
            if state is None or state.paused_until <= now:
                return None
            return state.paused_until - now + self._wall()
