"""Writes of what Braze acknowledged for each user: attributes, guard flags, last outcome."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import sqlalchemy as sa

from audience_sync.core.state import AckRow
from audience_sync.store import bulk


def save_acknowledged(
    conn: sa.Connection, *, workspace_id: int, rows: Sequence[AckRow], now: float
) -> None:
    """Upsert acknowledged attributes, guard flags and the last outcome of each user, in one
    set-based statement per dialect (:mod:`audience_sync.store.bulk`)."""
    if not rows:
        return
    values = [
        (
            r.external_id,
            orjson.dumps(dict(r.attributes)).decode(),
            orjson.dumps(sorted(r.flags)).decode(),
            now if r.wrote else None,
            r.outcome,
        )
        for r in rows
    ]
    bulk.of(conn).save_acknowledged(conn, workspace_id=workspace_id, now=now, rows=values)
