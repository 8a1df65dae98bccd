"""Reads of what a batch of Braze users should hold (desired) and did hold (acknowledged).

:func:`load_snapshot` gathers, for users of one workspace, every connection's desired state
(memberships, audience names, email, push tokens) and the acknowledged attributes, in a fixed
number of queries whatever the batch size: hand-written per dialect (:mod:`audience_sync.store.
bulk`), their rows plain tuples. It decides nothing (the core does).
"""

from __future__ import annotations

import typing as t
from collections import defaultdict
from collections.abc import Sequence

import orjson
import sqlalchemy as sa

from audience_sync.core.field_flags import FieldFlag
from audience_sync.core.state import Acknowledged, ConnectionRow, Desired, Snapshot
from audience_sync.core.states import AudienceState, ConnectionState
from audience_sync.store import bulk
from audience_sync.store.bulk import postgresql_delivery
from audience_sync.store.field_flags import field_flags_of, load_field_flags


def load_connections(conn: sa.Connection, workspace_id: int) -> tuple[ConnectionRow, ...]:
    """The connections writing to one workspace."""
    return tuple(
        ConnectionRow(
            account_id=account_id,
            account_settings=settings,
            settings_fingerprint=fingerprint,
            state=state,
        )
        for account_id, settings, fingerprint, state in bulk.of(conn).connection_rows(
            conn, workspace_id=workspace_id
        )
    )


def load_snapshot(
    conn: sa.Connection,
    workspace_id: int,
    external_ids: Sequence[str],
    *,
    account_ids: Sequence[int] | None = None,
    all_connections: bool = False,
) -> Snapshot:
    """Desired rows of ``account_ids`` (default: the workspace's active connections, or all of
    them with ``all_connections``) and the acknowledged attributes for ``external_ids``.

    On PostgreSQL, with the default accounts, every read goes in one round trip
    (:func:`audience_sync.store.postgresql_delivery.snapshot_all`)."""
    ids = list(external_ids)
    if conn.dialect.name == "postgresql" and account_ids is None and ids:
        return _load_postgresql(conn, workspace_id, ids, all_connections=all_connections)
    conns = load_connections(conn, workspace_id)
    if account_ids is None:
        account_ids = [
            c.account_id for c in conns if all_connections or c.state == ConnectionState.ACTIVE
        ]
    accounts = list(account_ids)

    names: dict[tuple[int, int], tuple[str, bool]] = {}
    user_list, member_list, acknowledged_list = (
        bulk.of(conn).snapshot_rows(conn, workspace_id=workspace_id, accounts=accounts, ids=ids)
        if ids
        else ([], [], [])
    )
    if accounts and ids:
        audience_ids = {audience_id for _a, _e, audience_id, _m in member_list}
        if audience_ids:
            for account_id, audience_id, name, state, cleanup in bulk.of(conn).audience_rows(
                conn, accounts=accounts, audience_ids=sorted(audience_ids)
            ):
                cleaned = state == AudienceState.REMOVED and cleanup
                names[(account_id, audience_id)] = (name, cleaned)
    else:
        user_list, member_list = [], []
    return _snapshot(
        conns,
        user_list,
        member_list,
        names,
        acknowledged_list,
        load_field_flags(conn, workspace_id, ids),
    )


def _load_postgresql(
    conn: sa.Connection, workspace_id: int, ids: list[str], *, all_connections: bool
) -> Snapshot:
    connection_list, user_list, member_list, acknowledged_list, flag_rows = (
        postgresql_delivery.snapshot_all(
            conn,
            workspace_id=workspace_id,
            ids=ids,
            active=None if all_connections else ConnectionState.ACTIVE.value,
        )
    )
    names: dict[tuple[int, int], tuple[str, bool]] = {}
    members = []
    for account_id, external_id, audience_id, is_member, name, state, cleanup in member_list:
        members.append((account_id, external_id, audience_id, is_member))
        if name is not None:
            names[(account_id, audience_id)] = (
                name,
                state == AudienceState.REMOVED and bool(cleanup),
            )
    conns = tuple(
        ConnectionRow(
            account_id=account_id,
            account_settings=settings,
            settings_fingerprint=fingerprint,
            state=state,
        )
        for account_id, settings, fingerprint, state in connection_list
    )
    return _snapshot(conns, user_list, members, names, acknowledged_list, field_flags_of(flag_rows))


def _snapshot(
    conns: tuple[ConnectionRow, ...],
    user_list: Sequence[tuple[t.Any, ...]],
    member_list: Sequence[tuple[t.Any, ...]],
    names: dict[tuple[int, int], tuple[str, bool]],
    acknowledged_list: Sequence[tuple[t.Any, ...]],
    field_flags: dict[str, tuple[FieldFlag, ...]],
) -> Snapshot:
    """The snapshot of the rows read: users' and memberships' rows of the accounts read,
    audience names (``(account, audience) -> (name, cleaned up)``), acknowledged rows."""
    user_rows: dict[tuple[int, str], tuple[t.Any, t.Any, t.Any]] = {}
    member_rows: dict[tuple[int, str], list[tuple[int, bool]]] = {}
    for account_id, external_id, email, push_tokens, updated_at in user_list:
        user_rows[(account_id, external_id)] = (email, push_tokens, updated_at)
    for account_id, external_id, audience_id, is_member in member_list:
        key = (account_id, external_id)
        held = member_rows.get(key)
        if held is None:
            member_rows[key] = [(audience_id, is_member)]
        else:
            held.append((audience_id, is_member))

    desired: dict[str, list[Desired]] = defaultdict(list)
    audience_accounts: dict[int, int] = {}
    # Many users share one membership pattern: build each pattern's tuple once.
    patterns: dict[tuple[int, tuple[tuple[int, bool], ...]], tuple[tuple[int, str, bool], ...]]
    patterns = {}
    shared: dict[tuple[t.Any, ...], Desired] = {}
    for key in set(user_rows) | set(member_rows):
        account_id, external_id = key
        row = user_rows.get(key)
        held_memberships = tuple(member_rows.get(key, ()))
        pattern = (account_id, held_memberships)
        kept = patterns.get(pattern)
        if kept is None:
            kept_list = []
            for audience_id, is_member in held_memberships:
                name, cleaned = names.get((account_id, audience_id), (str(audience_id), False))
                if cleaned:
                    continue
                kept_list.append((audience_id, name, bool(is_member)))
                audience_accounts.setdefault(audience_id, account_id)
            kept = patterns[pattern] = tuple(sorted(kept_list))
        if row is None:
            fields = (account_id, None, 0.0, (), kept)
        else:
            fields = (account_id, row[0], row[2], tuple(row[1] or ()), kept)
        # Users with the same desired row share one value (one hash, equal by identity in the
        # planner's memo).
        value = shared.get(fields)
        if value is None:
            value = shared[fields] = Desired(
                account_id=account_id,
                email=fields[1],
                email_updated_at=fields[2],
                push_tokens=fields[3],
                memberships=kept,
            )
        desired[external_id].append(value)

    acknowledged: dict[str, Acknowledged] = {}
    for external_id, attributes, flags, last_write_at in acknowledged_list:
        acknowledged[external_id] = Acknowledged(
            attributes=attributes or {},
            flags=tuple(flags or ()),
            last_write_at=last_write_at,
            attributes_key=(
                orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS).decode() if attributes else ""
            ),
        )
    return Snapshot(
        connections=conns,
        desired={k: tuple(v) for k, v in desired.items()},
        acknowledged=acknowledged,
        audience_accounts=audience_accounts,
        field_flags=field_flags,
    )
