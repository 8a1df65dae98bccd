"""Braze data points spent, per UTC day, workspace, connection and audience (SPEC §5.3); the
upsert is a hand-written statement per dialect (:mod:`audience_sync.store.bulk`)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.store import bulk


def datapoint_rows(
    workspace_id: int, charges: Mapping[tuple[int, int], int], *, now: float
) -> list[tuple[str, int, int, int, int]]:
    """``(day, workspace, account, audience, points)`` rows of :func:`add_datapoints`, sorted."""
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    return [
        (day, workspace_id, account_id, audience_id, points)
        for (account_id, audience_id), points in sorted(charges.items())
        if points
    ]


def add_datapoints_and_counts(
    conn: sa.Connection,
    *,
    datapoints: list[tuple[str, int, int, int, int]],
    counts: list[tuple[str, str, str, int]],
    commit: bool = False,
) -> None:
    """PostgreSQL: add :func:`datapoint_rows` and :func:`audience_sync.store.counters.
    count_rows` in one statement. Every sender adds to the same few rows of both tables and
    holds them until its commit; ``commit`` (the transaction's last statement): the COMMIT goes
    with it, in the same round trip, so no sender waits for another to be scheduled again."""
    if datapoints or counts:
        bulk.postgresql.add_datapoints_and_counts(
            conn, datapoints=datapoints, counts=counts, commit=commit
        )


def add_datapoints(
    conn: sa.Connection,
    *,
    workspace_id: int,
    charges: Mapping[tuple[int, int], int],
    now: float,
) -> None:
    """Add data points per (connection, audience) to today's totals (UTC)."""
    if not charges:
        return
    rows = datapoint_rows(workspace_id, charges, now=now)
    if rows:
        bulk.of(conn).add_datapoints(conn, rows=rows)
