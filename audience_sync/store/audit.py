"""The audit's reads and writes (SPEC §7 ``audit_braze``, ``audience-sync reconcile``).

Reads: which users of a workspace to audit, in two orders. The scheduled job takes the
oldest-verified first (``verified_at`` NULLs first, index ``ix_braze_users_workspace_verified``),
so successive runs page through everyone; ``reconcile`` walks every user by ``external_id``
(keyset). Both leave out users with a write pending or in flight (an export can lag a write,
and the sender is about to change what they hold anyway) and users written less than
``settle_s`` ago.

Writes: :func:`apply_audit` stores the repaired acknowledged state of drifted users and marks
them dirty (the sender then writes the minimal diff), and stamps ``verified_at`` on every user
read; a user whose acknowledged row changed since it was read (a write landed meanwhile) is
left for the next audit.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.states import ConnectionState, OutboxState
from audience_sync.store import outbox as outbox_repo
from audience_sync.store.schema import braze_users, connections, outbox, users


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A user to audit, with the acknowledged row as read."""

    external_id: str
    attributes: Mapping[str, t.Any]
    updated_at: float


def workspaces_to_audit(
    conn: sa.Connection, *, account_id: int | None = None
) -> dict[int, list[int]]:
    """Workspace id → its active connections (of ``account_id`` only, if given)."""
    query = sa.select(connections.c.workspace_id, connections.c.account_id).where(
        connections.c.state == ConnectionState.ACTIVE, connections.c.workspace_id.is_not(None)
    )
    if account_id is not None:
        query = query.where(connections.c.account_id == account_id)
    out: dict[int, list[int]] = {}
    for workspace_id, account in conn.execute(query.order_by(connections.c.account_id)):
        out.setdefault(int(workspace_id), []).append(int(account))
    return out


def _candidates(
    workspace_id: int, *, now: float, settle_s: float, account_id: int | None
) -> sa.Select[t.Any]:
    busy = sa.select(outbox.c.external_id).where(
        outbox.c.workspace_id == workspace_id,
        outbox.c.external_id == braze_users.c.external_id,
        outbox.c.state == OutboxState.PENDING,
    )
    query = sa.select(
        braze_users.c.external_id, braze_users.c.attributes, braze_users.c.updated_at
    ).where(
        braze_users.c.workspace_id == workspace_id,
        ~sa.exists(busy),
        sa.or_(
            braze_users.c.last_write_at.is_(None),
            braze_users.c.last_write_at <= now - settle_s,
        ),
    )
    if account_id is not None:
        of_account = sa.select(users.c.external_id).where(
            users.c.account_id == account_id, users.c.external_id == braze_users.c.external_id
        )
        query = query.where(sa.exists(of_account))
    return query


def _rows(conn: sa.Connection, query: sa.Select[t.Any]) -> list[Candidate]:
    return [
        Candidate(external_id=e, attributes=a or {}, updated_at=u)
        for e, a, u in conn.execute(query)
    ]


def oldest_verified(
    conn: sa.Connection,
    *,
    workspace_id: int,
    limit: int,
    now: float,
    settle_s: float,
    account_id: int | None = None,
) -> list[Candidate]:
    """The scheduled job's page: never verified first, then the longest ago."""
    query = _candidates(workspace_id, now=now, settle_s=settle_s, account_id=account_id)
    query = query.order_by(
        braze_users.c.verified_at.asc().nulls_first(), braze_users.c.external_id
    ).limit(limit)
    return _rows(conn, query)


def next_by_id(
    conn: sa.Connection,
    *,
    workspace_id: int,
    after: str | None,
    limit: int,
    now: float,
    settle_s: float,
    account_id: int | None = None,
) -> list[Candidate]:
    """``reconcile``'s page: every user, by ``external_id`` after ``after``."""
    query = _candidates(workspace_id, now=now, settle_s=settle_s, account_id=account_id)
    if after is not None:
        query = query.where(braze_users.c.external_id > after)
    return _rows(conn, query.order_by(braze_users.c.external_id).limit(limit))


def count_users(conn: sa.Connection, *, workspace_id: int, account_id: int | None = None) -> int:
    """Acknowledged users of a workspace (for a progress bar's total)."""
    query = sa.select(sa.func.count()).select_from(braze_users)
    query = query.where(braze_users.c.workspace_id == workspace_id)
    if account_id is not None:
        of_account = sa.select(users.c.external_id).where(
            users.c.account_id == account_id, users.c.external_id == braze_users.c.external_id
        )
        query = query.where(sa.exists(of_account))
    return int(conn.execute(query).scalar_one())


@dataclass(frozen=True, kw_only=True)
class Repair:
    """The acknowledged state to store for one drifted user."""

    external_id: str
    read_updated_at: float
    attributes: Mapping[str, t.Any]


def apply_audit(
    conn: sa.Connection,
    *,
    workspace_id: int,
    verified: Sequence[str],
    repairs: Sequence[Repair],
    now: float,
) -> list[str]:
    """Store repairs and mark those users dirty; stamp ``verified_at`` on the rest. Returns
    the users actually repaired (a user written or claimed since it was read is skipped)."""
    idle = ~sa.exists(
        sa.select(outbox.c.external_id).where(
            outbox.c.workspace_id == workspace_id,
            outbox.c.external_id == braze_users.c.external_id,
            sa.or_(outbox.c.claimed_until > now, outbox.c.in_flight.is_not(None)),
        )
    )
    repaired: list[str] = []
    for repair in sorted(repairs, key=lambda r: r.external_id):
        result = conn.execute(
            braze_users.update()
            .where(
                braze_users.c.workspace_id == workspace_id,
                braze_users.c.external_id == repair.external_id,
                braze_users.c.updated_at == repair.read_updated_at,
                idle,
            )
            .values(
                attributes=dict(repair.attributes),
                verified_at=now,
                updated_at=now,
                last_outcome="audit_drift",
                last_outcome_at=now,
            )
        )
        if result.rowcount:
            repaired.append(repair.external_id)
    if repaired:
        outbox_repo.enqueue(conn, workspace_id, repaired, now=now)
    for start in range(0, len(verified), 500):
        conn.execute(
            braze_users.update()
            .where(
                braze_users.c.workspace_id == workspace_id,
                braze_users.c.external_id.in_(list(verified[start : start + 500])),
            )
            .values(verified_at=now)
        )
    return repaired
