"""Read what a batch of Braze users should hold and did hold; record what Braze accepted.

:func:`load_snapshot` gathers, for users of one workspace, every connection's desired state
(memberships, audience names, email, push tokens) and the acknowledged attributes, in a fixed
number of queries whatever the batch size. :func:`save_acknowledged` stores the outcome of a
write. Both are called by the senders; neither decides anything (the core does).
"""

from __future__ import annotations

import time
import typing as t
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from audience_sync.store.dialect import insert
from audience_sync.store.schema import (
    audiences,
    braze_users,
    connections,
    datapoints,
    memberships,
    users,
)


@dataclass(frozen=True, kw_only=True)
class UserDesired:
    """One connection's desired state for one user (rows, not yet merged)."""

    account_id: int
    email: str | None = None
    email_updated_at: float = 0.0
    push_tokens: tuple[str, ...] = ()
    # (audience_id, name, is_member); audiences removed with cleanup are left out.
    memberships: tuple[tuple[int, str, bool], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Acknowledged:
    """What Braze confirmed for one user."""

    attributes: Mapping[str, t.Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    last_write_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class ConnectionRow:
    """A connection attached to the workspace, with its raw settings (parsed by the caller)."""

    account_id: int
    account_settings: Mapping[str, t.Any]
    settings_fingerprint: str
    state: str


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Everything needed to compute the writes for a batch of users of one workspace."""

    connections: tuple[ConnectionRow, ...]
    desired: Mapping[str, tuple[UserDesired, ...]]
    acknowledged: Mapping[str, Acknowledged]
    audience_accounts: Mapping[int, int]


def load_connections(conn: sa.Connection, workspace_id: int) -> tuple[ConnectionRow, ...]:
    """The connections writing to one workspace."""
    rows = conn.execute(
        sa.select(
            connections.c.account_id,
            connections.c.account_settings,
            connections.c.settings_fingerprint,
            connections.c.state,
        ).where(connections.c.workspace_id == workspace_id)
    )
    return tuple(
        ConnectionRow(
            account_id=r.account_id,
            account_settings=r.account_settings,
            settings_fingerprint=r.settings_fingerprint,
            state=r.state,
        )
        for r in rows
    )


def load_snapshot(
    conn: sa.Connection,
    workspace_id: int,
    external_ids: Sequence[str],
    *,
    account_ids: Sequence[int] | None = None,
) -> Snapshot:
    """Desired rows of ``account_ids`` (default: the workspace's active connections) and the
    acknowledged attributes for ``external_ids``."""
    conns = load_connections(conn, workspace_id)
    if account_ids is None:
        account_ids = [c.account_id for c in conns if c.state == "active"]
    accounts = list(account_ids)
    ids = list(external_ids)

    user_rows: dict[tuple[int, str], t.Any] = {}
    member_rows: dict[tuple[int, str], list[tuple[int, bool]]] = defaultdict(list)
    names: dict[tuple[int, int], tuple[str, bool]] = {}
    if accounts and ids:
        for r in conn.execute(
            sa.select(
                users.c.account_id,
                users.c.external_id,
                users.c.email,
                users.c.push_tokens,
                users.c.updated_at,
            ).where(users.c.account_id.in_(accounts), users.c.external_id.in_(ids))
        ):
            user_rows[(r.account_id, r.external_id)] = r
        audience_ids: set[int] = set()
        for r in conn.execute(
            sa.select(
                memberships.c.account_id,
                memberships.c.external_id,
                memberships.c.audience_id,
                memberships.c.is_member,
            ).where(memberships.c.account_id.in_(accounts), memberships.c.external_id.in_(ids))
        ):
            member_rows[(r.account_id, r.external_id)].append((r.audience_id, r.is_member))
            audience_ids.add(r.audience_id)
        if audience_ids:
            for r in conn.execute(
                sa.select(
                    audiences.c.account_id,
                    audiences.c.audience_id,
                    audiences.c.name,
                    audiences.c.state,
                    audiences.c.cleanup,
                ).where(
                    audiences.c.account_id.in_(accounts),
                    audiences.c.audience_id.in_(sorted(audience_ids)),
                )
            ):
                cleaned = r.state == "removed" and bool(r.cleanup)
                names[(r.account_id, r.audience_id)] = (r.name, cleaned)

    desired: dict[str, list[UserDesired]] = defaultdict(list)
    audience_accounts: dict[int, int] = {}
    for key in set(user_rows) | set(member_rows):
        account_id, external_id = key
        row = user_rows.get(key)
        kept = []
        for audience_id, is_member in member_rows.get(key, ()):
            name, cleaned = names.get((account_id, audience_id), (str(audience_id), False))
            if cleaned:
                continue
            kept.append((audience_id, name, bool(is_member)))
            audience_accounts.setdefault(audience_id, account_id)
        desired[external_id].append(
            UserDesired(
                account_id=account_id,
                email=row.email if row is not None else None,
                email_updated_at=row.updated_at if row is not None else 0.0,
                push_tokens=tuple(row.push_tokens or ()) if row is not None else (),
                memberships=tuple(sorted(kept)),
            )
        )

    acknowledged: dict[str, Acknowledged] = {}
    if ids:
        for r in conn.execute(
            sa.select(
                braze_users.c.external_id,
                braze_users.c.attributes,
                braze_users.c.flags,
                braze_users.c.last_write_at,
            ).where(braze_users.c.workspace_id == workspace_id, braze_users.c.external_id.in_(ids))
        ):
            acknowledged[r.external_id] = Acknowledged(
                attributes=r.attributes or {},
                flags=tuple(r.flags or ()),
                last_write_at=r.last_write_at,
            )
    return Snapshot(
        connections=conns,
        desired={k: tuple(v) for k, v in desired.items()},
        acknowledged=acknowledged,
        audience_accounts=audience_accounts,
    )


@dataclass(frozen=True, kw_only=True)
class AckRow:
    """The new acknowledged state of one user after an outcome."""

    external_id: str
    attributes: Mapping[str, t.Any]
    flags: Sequence[str]
    outcome: str
    wrote: bool


def save_acknowledged(
    conn: sa.Connection, *, workspace_id: int, rows: Sequence[AckRow], now: float
) -> None:
    """Upsert acknowledged attributes, guard flags and the last outcome of each user."""
    if not rows:
        return
    stmt = insert(conn, braze_users)
    wrote = stmt.excluded.last_write_at.is_not(None)
    stmt = stmt.on_conflict_do_update(
        index_elements=[braze_users.c.workspace_id, braze_users.c.external_id],
        set_={
            "attributes": stmt.excluded.attributes,
            "flags": stmt.excluded.flags,
            "last_write_at": sa.case(
                (wrote, stmt.excluded.last_write_at), else_=braze_users.c.last_write_at
            ),
            "last_outcome": stmt.excluded.last_outcome,
            "last_outcome_at": stmt.excluded.last_outcome_at,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn.execute(
        stmt,
        [
            {
                "workspace_id": workspace_id,
                "external_id": r.external_id,
                "attributes": dict(r.attributes),
                "flags": sorted(r.flags),
                "last_write_at": now if r.wrote else None,
                "last_outcome": r.outcome,
                "last_outcome_at": now,
                "updated_at": now,
            }
            for r in rows
        ],
    )


def add_datapoints(
    conn: sa.Connection,
    *,
    workspace_id: int,
    charges: Mapping[tuple[int, int], int],
    now: float,
) -> None:
    """Add data points per (connection, audience) to today's totals (UTC)."""
    if not charges:
        return
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    stmt = insert(conn, datapoints)
    stmt = stmt.on_conflict_do_update(
        index_elements=[
            datapoints.c.day,
            datapoints.c.workspace_id,
            datapoints.c.account_id,
            datapoints.c.audience_id,
        ],
        set_={"points": datapoints.c.points + stmt.excluded.points},
    )
    conn.execute(
        stmt,
        [
            {
                "day": day,
                "workspace_id": workspace_id,
                "account_id": account_id,
                "audience_id": audience_id,
                "points": points,
            }
            for (account_id, audience_id), points in sorted(charges.items())
            if points
        ],
    )
