"""Counts and data points a sender aggregates in memory between flushes.

Updating the same counter and data-point rows after every request made them the hottest rows
of the database (every sender, every request). A sender adds to its tally instead and writes
the sums once per iteration, in the transaction that records its last request
(:meth:`audience_sync.delivery.loop.SenderLoop.flush`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import sqlalchemy as sa

from audience_sync.store.counters import increment
from audience_sync.store.datapoints import add_datapoints


class Tally:
    """``(scope, reason) -> n`` counts and ``workspace -> (account, audience) -> points``."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.charges: dict[int, Counter[tuple[int, int]]] = {}

    def count(self, scope: str, counts: Mapping[str, int]) -> None:
        """Add counts of one scope (zero counts are kept out)."""
        for reason, n in counts.items():
            if n:
                self.counts[(scope, reason)] += n

    def charge(self, workspace_id: int, charges: Mapping[tuple[int, int], int]) -> None:
        """Add data points per (connection, audience) of one workspace."""
        if charges:
            self.charges.setdefault(workspace_id, Counter()).update(charges)

    def take(self, now: float) -> Callable[[sa.Connection], None] | None:
        """The store work that writes the sums so far (None when empty), and a fresh tally."""
        counts, charges = self.counts, self.charges
        if not counts and not charges:
            return None
        self.counts, self.charges = Counter(), {}

        def write(conn: sa.Connection) -> None:
            for workspace_id, per_audience in sorted(charges.items()):
                add_datapoints(conn, workspace_id=workspace_id, charges=per_audience, now=now)
            increment(conn, counts, now=now)

        return write
