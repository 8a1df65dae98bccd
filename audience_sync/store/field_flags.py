"""Reads and writes of the field values Braze refused per user (``field_flags``, SPEC §5.3).

The core decides what a refusal means (:mod:`audience_sync.core.field_flags`); this module only
remembers each refused value's fingerprint per user and field, and reads them back for a batch.
"""

from __future__ import annotations

import typing as t
from collections import defaultdict
from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from audience_sync.core.field_flags import FieldFlag
from audience_sync.store import bulk
from audience_sync.store.schema import field_flags
from audience_sync.store.statements import cached_statement, insert


def load_field_flags(
    conn: sa.Connection, workspace_id: int, external_ids: Sequence[str]
) -> dict[str, tuple[FieldFlag, ...]]:
    """The refused field values of each of ``external_ids`` that has any."""
    if not external_ids:
        return {}
    return field_flags_of(
        bulk.of(conn).field_flag_rows(conn, workspace_id=workspace_id, ids=external_ids)
    )


def field_flags_of(
    rows: Iterable[tuple[t.Any, ...]],
) -> dict[str, tuple[FieldFlag, ...]]:
    """:func:`load_field_flags` of rows ``(external_id, field, fingerprint, flag)`` read."""
    out: dict[str, list[FieldFlag]] = defaultdict(list)
    for external_id, name, digest, flag in rows:
        out[external_id].append(FieldFlag(field=name, fingerprint=digest, flag=flag))
    return {k: tuple(sorted(v, key=lambda f: f.field)) for k, v in out.items()}


def _upsert(conn: sa.Connection) -> t.Any:
    stmt = insert(conn, field_flags)
    return stmt.on_conflict_do_update(
        index_elements=[field_flags.c.workspace_id, field_flags.c.external_id, field_flags.c.field],
        set_={
            "fingerprint": stmt.excluded.fingerprint,
            "flag": stmt.excluded.flag,
            "flagged_at": stmt.excluded.flagged_at,
        },
    )


def save_field_flags(
    conn: sa.Connection,
    *,
    workspace_id: int,
    flags: Iterable[tuple[str, FieldFlag]],
    now: float,
) -> None:
    """Remember refused values: ``(external_id, flag)`` pairs; a newer one replaces the older."""
    rows = [
        {
            "workspace_id": workspace_id,
            "external_id": external_id,
            "field": f.field,
            "fingerprint": f.fingerprint,
            "flag": f.flag,
            "flagged_at": now,
        }
        for external_id, f in flags
    ]
    if rows:
        conn.execute(cached_statement(conn, "field_flags.upsert", lambda: _upsert(conn)), rows)
