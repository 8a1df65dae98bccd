"""Firehose message ids seen (idempotency, SPEC §3.1): a retried message is a duplicate."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.store.schema import firehose_messages
from audience_sync.store.statements import cached_statement, insert


def record_message(
    conn: sa.Connection, message_id: str, message_type: str, account_id: int, now: float
) -> bool:
    """Insert the message id; False when it was seen before (a retry by mParticle)."""
    stmt = cached_statement(
        conn,
        "messages.record",
        lambda: (
            insert(conn, firehose_messages)
            .on_conflict_do_nothing(index_elements=[firehose_messages.c.id])
            # RETURNING rather than rowcount, which psycopg reports as -1 here.
            .returning(firehose_messages.c.id)
        ),
    )
    row = {"id": message_id, "type": message_type, "account_id": account_id, "received_at": now}
    return conn.execute(stmt, row).first() is not None


def is_recorded(engine: sa.Engine, message_id: str) -> bool:
    """Whether the message id was committed (by this or a concurrent request)."""
    with engine.begin() as conn:
        query = sa.select(firehose_messages.c.id).where(firehose_messages.c.id == message_id)
        return conn.execute(query).first() is not None
