"""Names the Currents queue modules share: the states (from :mod:`audience_sync.core.states`),
the counter scope, and the count helper."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.core.states import CurrentsBatchState as BatchState
from audience_sync.core.states import CurrentsEventState as EventState
from audience_sync.core.states import FeedState
from audience_sync.store.counters import increment
from audience_sync.store.statements import chunks

__all__ = ["COUNTER_SCOPE", "BatchState", "EventState", "FeedState", "chunks", "count"]

COUNTER_SCOPE = "currents"


def count(conn: sa.Connection, counts: Mapping[str, int], *, now: float) -> None:
    """Add per-reason Currents counts (``received``, ``forwarded``, ``duplicate``…)."""
    increment(conn, {(COUNTER_SCOPE, reason): n for reason, n in counts.items()}, now=now)
