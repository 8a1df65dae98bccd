"""Pending cleanups: the durable record a Firehose request leaves instead of marking thousands
of users dirty inline (SPEC §4.6, §7 ``cleanup_removed``).

The intake calls :func:`record` (one row, O(1) whatever the audience size); the
``cleanup_removed`` job pages each open record with :func:`enqueue_page`, marking a bounded
number of users dirty per call through the normal outbox, so the sender writes each user's
minimal diff: removed-audience attributes cleared, a renamed ``In <name>`` moved, a mode
change applied. :func:`settle_old_workspace` ends what a connection left pending in the
workspace it moved away from, instead of letting the sender look at it every minute forever.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa

from audience_sync.core.states import CleanupKind, SubscriptionAction
from audience_sync.store import counters, outbox
from audience_sync.store.schema import (
    braze_users,
    connections,
    memberships,
    pending_cleanups,
    users,
)
from audience_sync.store.schema import outbox as outbox_rows

REASON_MOVED_DROPPED = "connection_moved_dropped"
"""Counter reason of the old workspace's pending rows dropped after a move without cleanup."""
REASON_MOVED_CLEARED = "connection_moved_cleared"
"""Counter reason of the old workspace's users left to be cleared after a move with cleanup."""


@dataclass(frozen=True, kw_only=True)
class Cleanup:
    """One open record."""

    id: int
    kind: CleanupKind
    account_id: int
    audience_id: int | None
    workspace_id: int
    old_workspace_id: int | None
    clear_old: bool
    cursor: str | None
    enqueued: int
    paged: bool = False
    old_target: tuple[str, str] | None = field(default=None, repr=False)


def record(
    conn: sa.Connection,
    *,
    kind: CleanupKind,
    account_id: int,
    workspace_id: int,
    now: float,
    audience_id: int | None = None,
    old_workspace_id: int | None = None,
    clear_old: bool = False,
    old_target: tuple[str, str] | None = None,
) -> None:
    """Leave the work for the job, in the caller's transaction (one INSERT)."""
    conn.execute(
        pending_cleanups.insert().values(
            kind=kind,
            account_id=account_id,
            audience_id=audience_id,
            workspace_id=workspace_id,
            old_workspace_id=old_workspace_id,
            clear_old=clear_old,
            old_target=(
                {"endpoint": old_target[0], "api_key": old_target[1]} if old_target else None
            ),
            created_at=now,
        )
    )


def open_cleanups(conn: sa.Connection, *, limit: int = 100) -> list[Cleanup]:
    """Records not finished yet, oldest first."""
    rows = conn.execute(
        sa.select(pending_cleanups)
        .where(pending_cleanups.c.done_at.is_(None))
        .order_by(pending_cleanups.c.id)
        .limit(limit)
    )
    return [
        Cleanup(
            id=r.id,
            kind=CleanupKind(r.kind),
            account_id=r.account_id,
            audience_id=r.audience_id,
            workspace_id=r.workspace_id,
            old_workspace_id=r.old_workspace_id,
            clear_old=bool(r.clear_old),
            cursor=r.cursor,
            enqueued=r.enqueued,
            paged=r.paged_at is not None,
            old_target=(
                (r.old_target["endpoint"], r.old_target["api_key"]) if r.old_target else None
            ),
        )
        for r in rows
    ]


def _page_query(cleanup: Cleanup, limit: int) -> sa.Select[tuple[str]]:
    if cleanup.audience_id is not None:
        # Members and former members alike: per-segment mode writes "In <name>" for both.
        column = memberships.c.external_id
        query = sa.select(column).where(
            memberships.c.account_id == cleanup.account_id,
            memberships.c.audience_id == cleanup.audience_id,
        )
    else:
        column = users.c.external_id
        query = sa.select(column).where(users.c.account_id == cleanup.account_id)
    if cleanup.cursor is not None:
        query = query.where(column > cleanup.cursor)
    return query.order_by(column).limit(limit)


def enqueue_page(
    conn: sa.Connection, cleanup: Cleanup, *, now: float, limit: int
) -> tuple[int, bool]:
    """Mark the next ``limit`` users of the record dirty in its workspace, move its cursor, and
    close it after the last page. A record whose connection has since moved to another
    workspace is closed without work: the move's own record resends everyone there."""
    current = conn.execute(
        sa.select(connections.c.workspace_id).where(connections.c.account_id == cleanup.account_id)
    ).scalar()
    if current != cleanup.workspace_id:
        _close(conn, cleanup.id, now)
        return 0, True
    ids = list(conn.execute(_page_query(cleanup, limit)).scalars())
    if ids:
        outbox.enqueue(conn, cleanup.workspace_id, ids, now=now)
    values: dict[str, object] = {"enqueued": pending_cleanups.c.enqueued + len(ids)}
    if ids:
        values["cursor"] = ids[-1]
    if len(ids) < limit:
        values["paged_at"] = now
        # Done, unless the old workspace of a move is still to be cleared.
        values["done_at"] = sa.case((pending_cleanups.c.clear_old, None), else_=now)
    conn.execute(
        pending_cleanups.update().where(pending_cleanups.c.id == cleanup.id).values(**values)
    )
    return len(ids), len(ids) < limit


def settle_old_workspace(conn: sa.Connection, cleanup: Cleanup, *, now: float) -> int:
    """After a move, end the moved connection's pending rows in the workspace it left.

    Rows of users that another connection still attached there also holds stay: the sender
    writes them for that connection. The others are dropped, counted under
    :data:`REASON_MOVED_DROPPED` (or :data:`REASON_MOVED_CLEARED` when the connection asked
    for cleanup: see the module's note in the README on clearing an old workspace).
    """
    old = cleanup.old_workspace_id
    if old is None:
        return 0
    others = sa.select(connections.c.account_id).where(
        connections.c.workspace_id == old, connections.c.account_id != cleanup.account_id
    )
    shared = sa.select(users.c.external_id).where(
        users.c.account_id.in_(others.scalar_subquery()),
        users.c.external_id == outbox_rows.c.external_id,
    )
    mine = sa.select(users.c.external_id).where(users.c.account_id == cleanup.account_id)
    result = conn.execute(
        outbox_rows.delete().where(
            outbox_rows.c.workspace_id == old,
            outbox_rows.c.external_id.in_(mine.scalar_subquery()),
            ~sa.exists(shared),
        )
    )
    dropped = max(result.rowcount or 0, 0)
    clearing = cleanup.clear_old and cleanup.old_target is not None
    reason = REASON_MOVED_CLEARED if clearing else REASON_MOVED_DROPPED
    counters.increment(conn, {(f"workspace:{old}", reason): dropped}, now=now)
    conn.execute(
        pending_cleanups.update()
        .where(pending_cleanups.c.id == cleanup.id)
        .values(settled=pending_cleanups.c.settled + dropped)
    )
    return dropped


def _close(conn: sa.Connection, cleanup_id: int, now: float) -> None:
    """Nothing (more) to mark; done unless an old workspace is still to be cleared."""
    conn.execute(
        pending_cleanups.update()
        .where(pending_cleanups.c.id == cleanup_id)
        .values(paged_at=now, done_at=sa.case((pending_cleanups.c.clear_old, None), else_=now))
    )


def prune_done(conn: sa.Connection, *, before: float) -> int:
    """Delete records finished before ``before``."""
    result = conn.execute(
        pending_cleanups.delete().where(
            pending_cleanups.c.done_at.is_not(None), pending_cleanups.c.done_at < before
        )
    )
    return max(result.rowcount or 0, 0)


_KIND_BY_ACTION = {
    SubscriptionAction.REMOVE: CleanupKind.AUDIENCE_REMOVED,
    SubscriptionAction.UPDATE: CleanupKind.AUDIENCE_RENAMED,
    SubscriptionAction.ADD: CleanupKind.AUDIENCE_READDED,
}


def record_audience_change(
    conn: sa.Connection,
    *,
    action: str,
    account_id: int,
    audience_id: int,
    workspace_id: int,
    now: float,
) -> None:
    """What the intake calls after an ``audience_subscription_request`` changed what members
    should hold (removed with cleanup, renamed, added again)."""
    record(
        conn,
        kind=_KIND_BY_ACTION[action],
        account_id=account_id,
        audience_id=audience_id,
        workspace_id=workspace_id,
        now=now,
    )


def record_connection_change(
    conn: sa.Connection,
    *,
    account_id: int,
    workspace_id: int,
    old_workspace_id: int | None,
    clear_old: bool,
    now: float,
    old_target: tuple[str, str] | None = None,
) -> None:
    """What the intake calls when a connection's settings changed what its users should hold:
    every user is to be written again; after a move to another workspace (instance or REST
    key), in full there, and its rows left in the old one are settled."""
    moved = old_workspace_id is not None and old_workspace_id != workspace_id
    record(
        conn,
        kind=CleanupKind.CONNECTION_MOVED if moved else CleanupKind.SETTINGS_CHANGED,
        account_id=account_id,
        workspace_id=workspace_id,
        old_workspace_id=old_workspace_id if moved else None,
        clear_old=clear_old and moved,
        old_target=old_target if clear_old and moved and all(old_target or ()) else None,
        now=now,
    )


CLEARED_OUTCOME = "cleared_after_move"
"""``braze_users.last_outcome`` of a user whose attributes were cleared from a workspace its
connection left: the paging of :func:`users_to_clear` skips them."""


def _left_behind(cleanup: Cleanup) -> sa.ColumnElement[bool]:
    """Acknowledged users of the old workspace that belong to the moved connection and to no
    other connection still attached there."""
    old = cleanup.old_workspace_id
    others = sa.select(connections.c.account_id).where(
        connections.c.workspace_id == old, connections.c.account_id != cleanup.account_id
    )
    mine = sa.select(users.c.external_id).where(
        users.c.account_id == cleanup.account_id, users.c.external_id == braze_users.c.external_id
    )
    shared = sa.select(users.c.external_id).where(
        users.c.account_id.in_(others.scalar_subquery()),
        users.c.external_id == braze_users.c.external_id,
    )
    return sa.and_(
        braze_users.c.workspace_id == old,
        sa.exists(mine),
        ~sa.exists(shared),
        sa.or_(braze_users.c.last_outcome.is_(None), braze_users.c.last_outcome != CLEARED_OUTCOME),
    )


def users_to_clear(
    conn: sa.Connection, cleanup: Cleanup, *, limit: int
) -> list[tuple[str, dict[str, t.Any]]]:
    """The next users whose attributes are to be cleared from the old workspace, with what
    it acknowledged for them."""
    rows = conn.execute(
        sa.select(braze_users.c.external_id, braze_users.c.attributes)
        .where(_left_behind(cleanup))
        .order_by(braze_users.c.external_id)
        .limit(limit)
    )
    return [(e, dict(a or {})) for e, a in rows]


def mark_cleared(
    conn: sa.Connection,
    cleanup: Cleanup,
    *,
    acknowledged: Mapping[str, Mapping[str, t.Any]],
    now: float,
) -> None:
    """Store what the old workspace now holds for users cleared there."""
    for external_id, attributes in sorted(acknowledged.items()):
        conn.execute(
            braze_users.update()
            .where(
                braze_users.c.workspace_id == cleanup.old_workspace_id,
                braze_users.c.external_id == external_id,
            )
            .values(
                attributes=dict(attributes),
                last_outcome=CLEARED_OUTCOME,
                last_outcome_at=now,
                last_write_at=now,
                updated_at=now,
            )
        )


def finish_clearing(conn: sa.Connection, cleanup: Cleanup, *, now: float) -> None:
    """The old workspace is clear (or refuses the old key): forget the key; the record is
    done if its users were all marked in the new workspace."""
    conn.execute(
        pending_cleanups.update()
        .where(pending_cleanups.c.id == cleanup.id)
        .values(
            clear_old=False,
            old_target=None,
            done_at=sa.case((pending_cleanups.c.paged_at.is_not(None), now), else_=None),
        )
    )
