"""Writes of what Braze acknowledged for each user: attributes, guard flags, last outcome."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import orjson
import sqlalchemy as sa

from audience_sync.core.state import AckRow
from audience_sync.store import bulk
from audience_sync.store.bulk import postgresql_delivery

AcknowledgedValues = tuple[str, str, str, float | None, str]
"""``(external_id, attributes JSON, flags JSON, last_write_at, outcome)`` of one user."""


def save_acknowledged(
    conn: sa.Connection, *, workspace_id: int, rows: Sequence[AckRow], now: float
) -> None:
    """Upsert acknowledged attributes, guard flags and the last outcome of each user, in one
    set-based statement per dialect (:mod:`audience_sync.store.bulk`)."""
    save_encoded(
        conn, workspace_id=workspace_id, values=encode_acknowledged(rows, now=now), now=now
    )


def encode_acknowledged(rows: Sequence[AckRow], *, now: float) -> list[AcknowledgedValues]:
    """The statement values of ``rows`` (JSON as text), built before the transaction: the
    writer holds SQLite's one write lock while it runs."""
    # Users planned alike share their attributes and flags values (the plan's memo): each
    # distinct value is encoded once. Keyed by identity: ``rows`` keeps every value alive.
    encoded: dict[int, str] = {}

    def encode(value: t.Any, as_json: t.Callable[[t.Any], t.Any]) -> str:
        text = encoded.get(id(value))
        if text is None:
            text = encoded[id(value)] = orjson.dumps(as_json(value)).decode()
        return text

    return [
        (
            r.external_id,
            encode(r.attributes, dict),
            encode(r.flags, sorted),
            now if r.wrote else None,
            r.outcome,
        )
        for r in rows
    ]


def save_encoded(
    conn: sa.Connection, *, workspace_id: int, values: Sequence[AcknowledgedValues], now: float
) -> None:
    """:func:`save_acknowledged` of values from :func:`encode_acknowledged`."""
    if values:
        bulk.of(conn).save_acknowledged(conn, workspace_id=workspace_id, now=now, rows=values)


def finish_acknowledged(
    conn: sa.Connection,
    *,
    worker_id: str,
    rows: Sequence[tuple[int, str, float, str, str, float | None, str]],
    now: float,
) -> set[tuple[int, str]]:
    """PostgreSQL: finish the users Braze accepted (:func:`audience_sync.store.outbox.finish`)
    and save what it acknowledged for those this sender held, for many requests in one
    statement; ``rows`` are :data:`AcknowledgedValues` with the workspace first and the next
    due time second. Returns the ``(workspace_id, external_id)`` finished; a user left out is
    either leased by another sender or still leased by this one after a concurrent change
    (finish it with :func:`~audience_sync.store.outbox.finish`)."""
    return postgresql_delivery.finish_acknowledged(conn, worker_id=worker_id, now=now, rows=rows)
