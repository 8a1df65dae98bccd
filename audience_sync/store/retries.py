"""Due retries in the outbox (SPEC §7 ``retry_due``), read through the ``(state, due_at)``
index only: the range ``state = 'pending' AND due_at <= now`` is what is due, never the whole
outbox."""

from __future__ import annotations

import typing as t
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


def find_due(conn: sa.Connection, *, now: float, limit: int) -> list[sa.Row[t.Any]]:
    """The oldest due rows (up to ``limit``): read outside the write transaction, so that
    SQLite's one write lock is not held while thousands of rows are read."""
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
    return list(conn.execute(due))


def stale_leases(rows: t.Iterable[sa.Row[t.Any]], *, now: float) -> list[sa.Row[t.Any]]:
    """Due rows still leased by a sender whose lease ran out."""
    return [r for r in rows if r.claimed_until is not None and r.claimed_until < now]


def release_leases(conn: sa.Connection, stale: t.Iterable[sa.Row[t.Any]]) -> int:
    """Hand back due rows whose sender died holding them; a row whose lease changed since it
    was read (renewed, claimed again, sent) is left alone. Returns how many were released.

    A sender that crashed leaves its users leased until the lease runs out; the claim query
    already takes such rows, but clearing the stale lease makes them plainly pending again for
    every reader (status, admin, a claim that filters on ``claimed_by``).
    """
    params = [{"w": r.workspace_id, "e": r.external_id, "until": r.claimed_until} for r in stale]
    if not params:
        return 0
    result = conn.execute(
        outbox.update()
        .where(
            outbox.c.workspace_id == sa.bindparam("w"),
            outbox.c.external_id == sa.bindparam("e"),
            outbox.c.claimed_until == sa.bindparam("until"),
        )
        .values(claimed_by=None, claimed_until=None),
        params,
    )
    return max(0, result.rowcount)


def summarize(rows: t.Sequence[sa.Row[t.Any]], *, now: float, released: int) -> DueRetries:
    """What a pass found: due retries and how late the oldest is."""
    retries = [r for r in rows if r.attempts > 0]
    late = max((now - r.due_at for r in retries), default=0.0)
    return DueRetries(due_retries=len(retries), leases_released=released, late_s=late)
