"""Braze data points spent, per UTC day, workspace, connection and audience (SPEC §5.3)."""

from __future__ import annotations

import time
import typing as t
from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.store.schema import datapoints
from audience_sync.store.statements import cached_statement, insert


def _upsert_datapoints(conn: sa.Connection) -> t.Any:
    stmt = insert(conn, datapoints)
    return stmt.on_conflict_do_update(
        index_elements=[
            datapoints.c.day,
            datapoints.c.workspace_id,
            datapoints.c.account_id,
            datapoints.c.audience_id,
        ],
        set_={"points": datapoints.c.points + stmt.excluded.points},
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
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    conn.execute(
        cached_statement(conn, "datapoints.upsert", lambda: _upsert_datapoints(conn)),
        [
            {
                "day": day,
                "workspace_id": workspace_id,
                "account_id": account_id,
                "audience_id": audience_id,
                "points": points,
            }
            for (account_id, audience_id), points in sorted(charges.items())
            if points
        ],
    )
