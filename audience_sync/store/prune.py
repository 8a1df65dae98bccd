"""Deleting what is past its window (SPEC §7 ``prune``): Firehose message ids kept for
duplicate detection, per-day counters and data points, finished job runs and cleanups."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.store.counters import utc_day
from audience_sync.store.schema import counters, datapoints, firehose_messages


def prune_firehose_ids(conn: sa.Connection, *, before: float) -> int:
    """Message ids received before ``before`` (index ``ix_firehose_messages_received``)."""
    result = conn.execute(
        firehose_messages.delete().where(firehose_messages.c.received_at < before)
    )
    return max(result.rowcount or 0, 0)


def prune_daily(conn: sa.Connection, *, before: float) -> int:
    """Counter and data-point rows of days that ended before ``before`` (UTC)."""
    day = utc_day(before)
    deleted = 0
    for table in (counters, datapoints):
        result = conn.execute(table.delete().where(table.c.day < day))
        deleted += max(result.rowcount or 0, 0)
    return deleted
