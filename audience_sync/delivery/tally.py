"""Counts and data points of the store work of one sender transaction, summed in memory and
written once at its end.

A sender's deferred records (:meth:`audience_sync.delivery.loop.SenderLoop.defer`) used to
update the same counter and data-point rows each on its own: several upserts of the same rows
per transaction. Each step adds to the transaction's tally instead; the sums are written in the
same transaction, so they commit (or roll back) with the records they count, and a retried
transaction starts from a fresh tally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import sqlalchemy as sa

from audience_sync.store.counters import count_rows, increment
from audience_sync.store.datapoints import (
    add_datapoints,
    add_datapoints_and_counts,
    datapoint_rows,
)


class LastStep(Protocol):
    """Store work gathered over a transaction's steps, run once at its end
    (:meth:`Tally.last_step`)."""

    def run(self, conn: sa.Connection, tally: Tally) -> None:
        """Write what was gathered, in ``conn``'s transaction; add its counts to ``tally``."""


class Tally:
    """``(scope, reason) -> n`` counts and per-workspace ``(account, audience) -> points``, per
    UTC day of the ``now`` they were counted at; and the data points spent and those a
    resend-everything output would have spent (for telemetry, after the commit)."""

    def __init__(self) -> None:
        # day number -> (a time of that day, counts, workspace -> charges)
        self._days: dict[
            int, tuple[float, Counter[tuple[str, str]], dict[int, Counter[tuple[int, int]]]]
        ] = {}
        self.spent = 0
        self.full = 0
        self._last_steps: dict[str, LastStep] = {}

    def _day(
        self, now: float
    ) -> tuple[float, Counter[tuple[str, str]], dict[int, Counter[tuple[int, int]]]]:
        # POSIX days are 86,400 s long: the day's number, not its formatted name, is the key.
        day = int(now // 86_400)
        held = self._days.get(day)
        if held is None:
            held = self._days[day] = (now, Counter(), {})
        return held

    def count(self, scope: str, counts: Mapping[str, int], *, now: float) -> None:
        """Add counts of one scope (zero counts are left out)."""
        if not any(counts.values()):
            return
        held = self._day(now)[1]
        for reason, n in counts.items():
            if n:
                held[(scope, reason)] += n

    def charge(
        self, workspace_id: int, charges: Mapping[tuple[int, int], int], *, now: float
    ) -> None:
        """Add data points per (connection, audience) of one workspace."""
        if charges:
            self._day(now)[2].setdefault(workspace_id, Counter()).update(charges)

    def last_step(self, key: str, make: Callable[[], LastStep]) -> LastStep:
        """The step of this transaction named ``key`` (made by ``make`` at first): it runs in
        :meth:`write`, before the sums are written, and may add to them. The steps of many
        records can so gather their rows into one statement."""
        step = self._last_steps.get(key)
        if step is None:
            step = self._last_steps[key] = make()
        return step

    def write(self, conn: sa.Connection, *, last: bool = False) -> None:
        """Run the last steps, then write the sums, in the caller's transaction (on PostgreSQL
        in one statement; ``last``: the transaction's last statement, committed in the same
        round trip)."""
        for step in self._last_steps.values():
            step.run(conn, self)
        if conn.dialect.name == "postgresql":
            datapoints, counts = [], []
            for _day, (now, day_counts, charges) in sorted(self._days.items()):
                for workspace_id, per_audience in sorted(charges.items()):
                    datapoints += datapoint_rows(workspace_id, per_audience, now=now)
                counts += count_rows(day_counts, now=now)
            add_datapoints_and_counts(conn, datapoints=datapoints, counts=counts, commit=last)
            return
        for _day, (now, counts, charges) in sorted(self._days.items()):
            for workspace_id, per_audience in sorted(charges.items()):
                add_datapoints(conn, workspace_id=workspace_id, charges=per_audience, now=now)
            if counts:
                increment(conn, counts, now=now)
