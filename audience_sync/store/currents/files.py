"""Imported Currents files: each (path, checksum) once (SPEC §6.2)."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.store.schema import (
    currents_files,
)
from audience_sync.store.statements import insert


def is_imported(conn: sa.Connection, path: str, checksum: str) -> bool:
    """Whether this file (path and content) was imported before."""
    return (
        conn.execute(
            sa.select(currents_files.c.id).where(
                currents_files.c.path == path, currents_files.c.checksum == checksum
            )
        ).first()
        is not None
    )


def record_file(
    conn: sa.Connection,
    *,
    path: str,
    checksum: str,
    size: int,
    events: int,
    forwarded: int,
    skipped: Mapping[str, int],
    now: float,
) -> bool:
    """Record an imported file in the import's transaction; False if another importer did."""
    inserted = conn.execute(
        insert(conn, currents_files)
        .on_conflict_do_nothing(index_elements=[currents_files.c.path, currents_files.c.checksum])
        .returning(currents_files.c.id),
        {
            "path": path,
            "checksum": checksum,
            "size": size,
            "events": events,
            "forwarded": forwarded,
            "skipped": dict(skipped),
            "imported_at": now,
        },
    ).first()
    return inserted is not None
