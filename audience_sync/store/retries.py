"""Due retries in the outbox (SPEC §7 ``retry_due``), read through the ``(state, due_at)``
index only: the range ``state = 'pending' AND due_at <= now`` is what is due, never the whole
outbox."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from audience_sync.core.states import OutboxState
from audience_sync.store.schema import outbox


def due_range(now: float) -> sa.ColumnElement[bool]:
    """The index range of what is due (``ix_outbox_state_due``)."""
    return sa.and_(outbox.c.state == OutboxState.PENDING, outbox.c.due_at <= now)


def _oldest_due(now: float, limit: int, *columns: sa.Column[t.Any]) -> sa.Subquery:
    """``columns`` of the ``limit`` oldest due rows (the bound of one pass)."""
    return (
        sa.select(*columns).where(due_range(now)).order_by(outbox.c.due_at).limit(limit).subquery()
    )


def due_retries(conn: sa.Connection, *, now: float, limit: int) -> tuple[int, float]:
    """Among the ``limit`` oldest due rows, how many failed before, and how late the most
    overdue of those is (0 when none): counted by the database, no row comes back to Python."""
    oldest_due = _oldest_due(now, limit, outbox.c.attempts, outbox.c.due_at)
    count, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(oldest_due.c.due_at)).where(
            oldest_due.c.attempts > 0
        )
    ).one()
    return int(count), (now - float(oldest)) if oldest is not None else 0.0


def stale_leases(conn: sa.Connection, *, now: float, limit: int) -> list[sa.Row[t.Any]]:
    """Among the ``limit`` oldest due rows, those still leased by a sender whose lease ran
    out: read outside the write transaction, so that SQLite's one write lock is not held while
    the due range is read."""
    oldest_due = _oldest_due(
        now, limit, outbox.c.workspace_id, outbox.c.external_id, outbox.c.claimed_until
    )
    query = sa.select(oldest_due).where(oldest_due.c.claimed_until < now)
    return list(conn.execute(query))


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
