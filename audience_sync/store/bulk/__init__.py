"""Hand-written set-based statements of the sender's hot path, one module per dialect.

Each verb updates many outbox rows in one statement from a list of per-row values: on SQLite an
``UPDATE ... FROM (VALUES ...)`` with the rows as bound parameters, on PostgreSQL an ``UPDATE
... FROM jsonb_to_recordset(...)`` with the rows as one JSON parameter. SQLAlchemy's
``executemany`` ran one UPDATE per row and processed every row's parameters in Python: most of
a sender's SQL time. The schema and the other statements stay SQLAlchemy Core.

Rows are tuples; JSON values are already encoded (:func:`json_text`). Every verb is tested on
both databases (``tests/integration/test_bulk_statements.py``).

PostgreSQL's statements of the Firehose intake and the journal applier (one statement per
table for a round of entries, where SQLite keeps ``executemany``) are in
:mod:`audience_sync.store.bulk.postgresql_intake`; they are tested through the journal's tests,
which expect the same state on both databases. The sender's statements that do on PostgreSQL
in one round trip what SQLite does in several (the claim, the snapshot, the record of accepted
users) are in :mod:`audience_sync.store.bulk.postgresql_delivery`.
"""

from __future__ import annotations

import typing as t
from types import ModuleType

import orjson
import sqlalchemy as sa

from audience_sync.store.bulk import postgresql, sqlite


def json_text(value: t.Any) -> str | None:
    """``value`` as JSON text for a JSON column; None stays SQL NULL."""
    return None if value is None else orjson.dumps(value).decode()


def of(conn: sa.Connection) -> ModuleType:
    """The statements of ``conn``'s dialect."""
    return postgresql if conn.dialect.name == "postgresql" else sqlite
