"""A sender's deferred records and their tally (delivery/loop.py, delivery/tally.py): the counts
of a transaction's deferred steps are written once, per UTC day, in that transaction; a
transaction tried again counts its steps once; the vendor hears of the tally after the commit."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.core.retry import RetryPolicy
from audience_sync.delivery.loop import SenderLoop
from audience_sync.delivery.tally import Tally
from audience_sync.store.counters import totals
from audience_sync.store.schema import counters, datapoints

DAY_1 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY_2 = DAY_1 + 86_400.5  # 2026-01-02, just after midnight


class _Loop(SenderLoop[str]):
    vendor = "test"

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(
            engine=engine,
            worker_id="w",
            policy=RetryPolicy(base_s=1, cap_s=1, retry_window_s=1, max_attempts=1),
            poll_interval_s=0.1,
        )
        self.reported: list[tuple[int, int]] = []

    def claim(self, now):
        return []

    def group_of(self, item):
        return item

    def deliver(self, group, items):
        return None

    def committed(self, tally: Tally) -> None:
        self.reported.append((tally.spent, tally.full))


def test_counts_of_deferred_steps_are_written_per_day_with_the_next_transaction(engine):
    loop = _Loop(engine)

    def record(conn, tally: Tally, *, now: float, n: int) -> None:
        tally.count("workspace:1", {"accepted": n, "unchanged": 0}, now=now)
        tally.charge(1, {(10, 7): n}, now=now)
        tally.spent += n

    loop.defer(lambda conn, tally: record(conn, tally, now=DAY_1, n=2))
    loop.defer(lambda conn, tally: record(conn, tally, now=DAY_1 + 5, n=3))
    loop.defer(lambda conn, tally: record(conn, tally, now=DAY_2, n=4))
    with engine.connect() as conn:
        assert totals(conn) == {}  # deferred: nothing written yet
    assert loop.transaction(lambda conn: "work", action="test") == "work"

    with engine.connect() as conn:
        per_day = {(r.day, r.reason): r.count for r in conn.execute(sa.select(counters))}
        points = {(r.day, r.audience_id): r.points for r in conn.execute(sa.select(datapoints))}
    assert per_day == {("2026-01-01", "accepted"): 5, ("2026-01-02", "accepted"): 4}
    assert points == {("2026-01-01", 7): 5, ("2026-01-02", 7): 4}
    assert loop.reported == [(9, 0)]
    loop.flush()  # nothing left to write
    assert loop.reported == [(9, 0)]


def test_a_transaction_tried_again_counts_its_deferred_steps_once(engine):
    loop = _Loop(engine)
    tries = []

    def record(conn, tally: Tally) -> None:
        tally.count("workspace:1", {"accepted": 1}, now=DAY_1)

    def work(conn) -> None:
        tries.append(1)
        if len(tries) == 1:
            # The first try aborts as SQLite's busy writer lock does; the runner tries again.
            raise sa.exc.OperationalError("BEGIN", {}, Exception("database is locked"))

    loop.defer(record)
    loop.transaction(work, action="test")

    assert len(tries) == 2
    with engine.connect() as conn:
        assert totals(conn) == {("workspace:1", "accepted"): 1}
