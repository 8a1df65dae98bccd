"""Braze data points spent, per UTC day, workspace, connection and audience (SPEC §5.3); the
upsert is a hand-written statement per dialect (:mod:`audience_sync.store.bulk`)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.store import bulk


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
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    rows = [
        (day, workspace_id, account_id, audience_id, points)
        for (account_id, audience_id), points in sorted(charges.items())
        if points
    ]
    if rows:
        bulk.of(conn).add_datapoints(conn, rows=rows)
