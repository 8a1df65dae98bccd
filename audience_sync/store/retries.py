"""Due retries in the outbox (SPEC §7 ``retry_due``), read through the ``(state, due_at)``
index only: the range ``state = 'pending' AND due_at <= now`` is what is due, never the whole
outbox."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.states import OutboxState
from audience_sync.store.schema import outbox


@dataclass(frozen=True, kw_only=True)
class DueRetries:
    """What a pass found and did."""

    due_retries: int  # failed before, due again now
    leases_released: int  # due rows still leased by a sender whose lease ran out
    late_s: float  # how long the most overdue retry has waited past its due time


def due_range(now: float) -> sa.ColumnElement[bool]:
    """The index range of what is due (``ix_outbox_state_due``)."""
    return sa.and_(outbox.c.state == OutboxState.PENDING, outbox.c.due_at <= now)


def release_due(conn: sa.Connection, *, now: float, limit: int) -> DueRetries:
    """Hand back due retries whose sender died holding them, and measure the rest.

    A sender that crashed leaves its users leased until the lease runs out; the claim query
    already takes such rows, but clearing the stale lease makes them plainly pending again for
    every reader (status, admin, a claim that filters on ``claimed_by``).
    """
    due = (
        sa.select(
            outbox.c.workspace_id,
            outbox.c.external_id,
            outbox.c.due_at,
            outbox.c.attempts,
            outbox.c.claimed_until,
        )
        .where(due_range(now))
        .order_by(outbox.c.due_at)
        .limit(limit)
    )
    rows = list(conn.execute(due))
    retries = [r for r in rows if r.attempts > 0]
    stale = [r for r in rows if r.claimed_until is not None and r.claimed_until < now]
    for row in stale:
        conn.execute(
            outbox.update()
            .where(
                outbox.c.workspace_id == row.workspace_id,
                outbox.c.external_id == row.external_id,
                outbox.c.claimed_until == row.claimed_until,
            )
            .values(claimed_by=None, claimed_until=None)
        )
    late = max((now - r.due_at for r in retries), default=0.0)
    return DueRetries(due_retries=len(retries), leases_released=len(stale), late_s=late)
