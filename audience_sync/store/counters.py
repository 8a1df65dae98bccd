"""Per-reason counters by UTC day (SPEC §5.3, STYLE §4.6: drops are counted, never silent).

A scope names what is counted: ``"account:123"`` (a connection), ``"workspace:4"`` or
``"global"``; a reason is a short stable word such as ``memberships_applied`` or
``no_external_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from audience_sync.store import bulk
from audience_sync.store.schema import counters


def utc_day(now: float) -> str:
    """``YYYY-MM-DD`` of an epoch second, in UTC."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")


def count_rows(
    counts: Mapping[tuple[str, str], int], *, now: float
) -> list[tuple[str, str, str, int]]:
    """``(day, scope, reason, n)`` rows of :func:`increment`: zero counts left out, in key
    order (so that concurrent writers lock them in the same order)."""
    day = utc_day(now)
    return [(day, scope, reason, n) for (scope, reason), n in sorted(counts.items()) if n]


def increment(conn: sa.Connection, counts: Mapping[tuple[str, str], int], *, now: float) -> None:
    """Add ``counts`` (``(scope, reason) -> n``) to today's counters, in the caller's
    transaction. Zero counts are skipped; rows are written in key order so that concurrent
    writers lock them in the same order."""
    rows = count_rows(counts, now=now)
    if rows:
        bulk.of(conn).add_counts(conn, rows=rows)


def totals(
    conn: sa.Connection, *, scope: str | None = None, day: str | None = None
) -> dict[tuple[str, str], int]:
    """Summed counts per ``(scope, reason)``, optionally for one scope and/or one day."""
    query = sa.select(counters.c.scope, counters.c.reason, sa.func.sum(counters.c["count"]))
    if scope is not None:
        query = query.where(counters.c.scope == scope)
    if day is not None:
        query = query.where(counters.c.day == day)
    query = query.group_by(counters.c.scope, counters.c.reason)
    return {(s, r): int(n) for s, r, n in conn.execute(query)}
