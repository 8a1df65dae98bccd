"""Writes of what Braze acknowledged for each user: attributes, guard flags, last outcome."""

from __future__ import annotations

import typing as t
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
    # Users planned alike share their attributes and flags values (the plan's memo): each
    # distinct value is encoded once. Keyed by identity: ``rows`` keeps every value alive.
    encoded: dict[int, str] = {}

    def encode(value: t.Any, as_json: t.Callable[[t.Any], t.Any]) -> str:
        text = encoded.get(id(value))
        if text is None:
            text = encoded[id(value)] = orjson.dumps(as_json(value)).decode()
        return text

    values = [
        (
            r.external_id,
            encode(r.attributes, dict),
            encode(r.flags, sorted),
            now if r.wrote else None,
            r.outcome,
        )
        for r in rows
    ]
    bulk.of(conn).save_acknowledged(conn, workspace_id=workspace_id, now=now, rows=values)
