"""Workspace suspension (SPEC §5.5): a rejected REST key stops sends to its workspace until the
settings change (the intake resumes it) or a periodic probe succeeds."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.store.schema import workspaces

ACTIVE = "active"
SUSPENDED = "suspended"


def suspend(
    conn: sa.Connection, *, workspace_id: int, reason: str, now: float, probe_at: float
) -> bool:
    """Suspend the workspace; returns True if it was active (first to notice)."""
    result = conn.execute(
        workspaces.update()
        .where(workspaces.c.id == workspace_id, workspaces.c.state == ACTIVE)
        .values(state=SUSPENDED, state_reason=reason, suspended_at=now, next_probe_at=probe_at)
    )
    return bool(result.rowcount)


def resume(conn: sa.Connection, *, workspace_id: int) -> bool:
    """Resume sending; returns True if it was suspended."""
    result = conn.execute(
        workspaces.update()
        .where(workspaces.c.id == workspace_id, workspaces.c.state == SUSPENDED)
        .values(state=ACTIVE, state_reason=None, suspended_at=None, next_probe_at=None)
    )
    return bool(result.rowcount)


def claim_probes(conn: sa.Connection, *, now: float, interval_s: float) -> list[int]:
    """Suspended workspaces whose probe is due; the next probe is pushed back atomically so
    that one sender probes each."""
    due = sa.and_(
        workspaces.c.state == SUSPENDED,
        sa.or_(workspaces.c.next_probe_at.is_(None), workspaces.c.next_probe_at <= now),
    )
    result = conn.execute(
        workspaces.update()
        .where(due)
        .values(next_probe_at=now + interval_s)
        .returning(workspaces.c.id)
    )
    return [row.id for row in result]


def state_of(conn: sa.Connection, workspace_id: int) -> str | None:
    """``active`` or ``suspended`` (None if there is no such workspace)."""
    return conn.execute(
        sa.select(workspaces.c.state).where(workspaces.c.id == workspace_id)
    ).scalar_one_or_none()
