"""States of the Currents queue and the helpers its modules share."""

from __future__ import annotations

import typing as t
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import sqlalchemy as sa

from audience_sync.store.counters import increment

COUNTER_SCOPE = "currents"
ID_CHUNK = 500
"""Ids per ``IN (...)`` list (far under SQLite's and PostgreSQL's parameter limits)."""


class EventState(StrEnum):
    """A row of ``currents_events`` (batched events leave the table)."""

    QUEUED = "queued"
    HELD = "held"
    DEAD = "dead"


class BatchState(StrEnum):
    """A formed batch (accepted batches are deleted)."""

    PENDING = "pending"
    DEAD = "dead"


class FeedState(StrEnum):
    """An mParticle feed: paused while its credentials are refused (SPEC §6.5)."""

    ACTIVE = "active"
    PAUSED = "paused"


def chunks(items: Sequence[t.Any], size: int = ID_CHUNK) -> Iterable[Sequence[t.Any]]:
    """``items`` in slices of at most ``size`` (for ``IN (...)`` lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def count(conn: sa.Connection, counts: Mapping[str, int], *, now: float) -> None:
    """Add per-reason Currents counts (``received``, ``forwarded``, ``duplicate``…)."""
    increment(conn, {(COUNTER_SCOPE, reason): n for reason, n in counts.items()}, now=now)
