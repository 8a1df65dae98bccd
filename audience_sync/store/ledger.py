"""Writes of what Braze acknowledged for each user: attributes, guard flags, last outcome."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.core.state import AckRow
from audience_sync.store.schema import braze_users
from audience_sync.store.statements import cached_statement, insert


def _upsert_acknowledged(conn: sa.Connection) -> t.Any:
    stmt = insert(conn, braze_users)
    wrote = stmt.excluded.last_write_at.is_not(None)
    return stmt.on_conflict_do_update(
        index_elements=[braze_users.c.workspace_id, braze_users.c.external_id],
        set_={
            "attributes": stmt.excluded.attributes,
            "flags": stmt.excluded.flags,
            "last_write_at": sa.case(
                (wrote, stmt.excluded.last_write_at), else_=braze_users.c.last_write_at
            ),
            "last_outcome": stmt.excluded.last_outcome,
            "last_outcome_at": stmt.excluded.last_outcome_at,
            "updated_at": stmt.excluded.updated_at,
        },
    )


def save_acknowledged(
    conn: sa.Connection, *, workspace_id: int, rows: Sequence[AckRow], now: float
) -> None:
    """Upsert acknowledged attributes, guard flags and the last outcome of each user."""
    if not rows:
        return
    conn.execute(
        cached_statement(conn, "ledger.upsert_acknowledged", lambda: _upsert_acknowledged(conn)),
        [
            {
                "workspace_id": workspace_id,
                "external_id": r.external_id,
                "attributes": dict(r.attributes),
                "flags": sorted(r.flags),
                "last_write_at": now if r.wrote else None,
                "last_outcome": r.outcome,
                "last_outcome_at": now,
                "updated_at": now,
            }
            for r in rows
        ],
    )
