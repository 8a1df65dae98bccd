"""The dirty-user outbox: one row per Braze user ``(workspace_id, external_id)``.

Verbs: :func:`enqueue` (from the Firehose intake and the jobs), and, for senders, ``claim``,
``finish``, ``reschedule``, ``bury`` (dead-letter) and ``replay``.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from audience_sync.store.dialect import insert
from audience_sync.store.schema import outbox

PENDING = "pending"
DEAD = "dead"


def enqueue(
    conn: sa.Connection,
    keys: Iterable[tuple[int, str]],
    *,
    now: float,
    delay_s: float = 0.0,
) -> int:
    """Mark Braze users dirty, in the caller's transaction.

    A new row is due at ``now + delay_s`` (the coalescing window). An existing pending row keeps
    its due time and attempts (a change does not cut short a backoff) but its generation is
    bumped, so a sender that claimed it before this change will not drop it. A dead row comes
    back to life: the change is new work.
    """
    rows = [
        {
            "workspace_id": workspace_id,
            "external_id": external_id,
            "state": PENDING,
            "generation": 1,
            "due_at": now + delay_s,
            "attempts": 0,
            "enqueued_at": now,
        }
        for workspace_id, external_id in dict.fromkeys(keys)
    ]
    if not rows:
        return 0
    stmt = insert(conn, outbox)
    was_dead = outbox.c.state == DEAD
    stmt = stmt.on_conflict_do_update(
        index_elements=[outbox.c.workspace_id, outbox.c.external_id],
        set_={
            "generation": outbox.c.generation + 1,
            "state": PENDING,
            "due_at": sa.case((was_dead, stmt.excluded.due_at), else_=outbox.c.due_at),
            "attempts": sa.case((was_dead, 0), else_=outbox.c.attempts),
            "first_failure_at": sa.case((was_dead, None), else_=outbox.c.first_failure_at),
        },
    )
    conn.execute(stmt, rows)
    return len(rows)
