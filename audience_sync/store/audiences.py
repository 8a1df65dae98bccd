"""Audiences of a connection (SPEC §3.2, §4.6): added, renamed, removed by subscription
requests, registered when a membership change names an unknown one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from audience_sync.core.states import AudienceState, SubscriptionAction
from audience_sync.store import cleanups
from audience_sync.store.schema import audiences
from audience_sync.store.statements import chunks, insert


def apply_subscription(
    conn: sa.Connection,
    *,
    account_id: int,
    audience_id: int,
    name: str,
    action: str,
    cleanup_on_remove: bool,
    workspace_id: int | None,
    now: float,
) -> None:
    """Add, rename or remove the audience. When members should now hold something else,
    leave a pending cleanup for ``workspace_id`` (the connection's delivery workspace, None
    while deliveries wait): the ``cleanup_removed`` job marks them dirty, so a request for an
    audience of 100,000 members stays O(1)."""
    key = (audiences.c.account_id == account_id) & (audiences.c.audience_id == audience_id)
    row = conn.execute(sa.select(audiences.c.name, audiences.c.state).where(key)).first()
    mark_members = False
    if action == SubscriptionAction.REMOVE:
        cleanup = cleanup_on_remove
        if row is None:
            insert_audiences(
                conn,
                account_id,
                {audience_id: name},
                now,
                state=AudienceState.REMOVED,
                cleanup=cleanup,
            )
        elif row.state != AudienceState.REMOVED:
            conn.execute(
                sa.update(audiences)
                .where(key)
                .values(
                    state=AudienceState.REMOVED,
                    removed_at=now,
                    cleanup=cleanup,
                    cleanup_done_at=None,
                    updated_at=now,
                )
            )
            # Members get their attributes cleared by the sender (SPEC §7).
            mark_members = cleanup
    elif row is None:
        insert_audiences(conn, account_id, {audience_id: name}, now)
    elif action == SubscriptionAction.ADD:
        if row.state != AudienceState.ACTIVE or row.name != name:
            conn.execute(
                sa.update(audiences)
                .where(key)
                .values(
                    state=AudienceState.ACTIVE,
                    name=name,
                    cleanup=False,
                    cleanup_done_at=None,
                    removed_at=None,
                    updated_at=now,
                )
            )
            mark_members = True
    elif row.name != name:  # update: a rename (SPEC §4.6)
        conn.execute(sa.update(audiences).where(key).values(name=name, updated_at=now))
        mark_members = True
    if mark_members and workspace_id is not None:
        # The members are marked dirty by the cleanup_removed job, page by page (SPEC §7).
        cleanups.record_audience_change(
            conn,
            action=action,
            account_id=account_id,
            audience_id=audience_id,
            workspace_id=workspace_id,
            now=now,
        )


def insert_audiences(
    conn: sa.Connection,
    account_id: int,
    names: Mapping[int, str],
    now: float,
    *,
    state: str = AudienceState.ACTIVE,
    cleanup: bool = False,
) -> None:
    """Insert audiences not known yet (a concurrent insert wins)."""
    rows = [
        {
            "account_id": account_id,
            "audience_id": audience_id,
            "name": name,
            "state": state,
            "cleanup": cleanup,
            "created_at": now,
            "updated_at": now,
            "removed_at": now if state == AudienceState.REMOVED else None,
        }
        for audience_id, name in sorted(names.items())
    ]
    stmt = insert(conn, audiences).on_conflict_do_nothing(
        index_elements=[audiences.c.account_id, audiences.c.audience_id]
    )
    conn.execute(stmt, rows)


_SELECT_AUDIENCE_STATES = sa.select(audiences.c.audience_id, audiences.c.state).where(
    audiences.c.account_id == sa.bindparam("b_account_id"),
    audiences.c.audience_id.in_(sa.bindparam("b_audience_ids", expanding=True)),
)


def audience_states(
    conn: sa.Connection, account_id: int, audience_ids: Sequence[int]
) -> dict[int, str]:
    """The state of each known audience among ``audience_ids``."""
    states: dict[int, str] = {}
    for chunk in chunks(audience_ids):
        params = {"b_account_id": account_id, "b_audience_ids": list(chunk)}
        states.update((int(a), s) for a, s in conn.execute(_SELECT_AUDIENCE_STATES, params))
    return states
