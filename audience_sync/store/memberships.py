"""Users and their audience memberships, as the Firehose intake applies them (SPEC §4.1).

Order independence: a membership row carries the ``timestamp_ms`` of the message that set it,
and an upsert only overwrites a row that is not newer, so a late retry of an older message
never undoes a newer one.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from collections.abc import Mapping, Sequence

import sqlalchemy as sa

from audience_sync.core.membership import (
    MembershipPlan,
    UserUpdate,
    merge_plans,
    merge_push_tokens,
)
from audience_sync.core.states import AudienceState, IntakeCounter
from audience_sync.store.audiences import audience_states, insert_audiences
from audience_sync.store.bulk import postgresql_intake as postgresql
from audience_sync.store.outbox import enqueue
from audience_sync.store.schema import memberships, users
from audience_sync.store.statements import chunks, executemany, insert


def apply_membership_plan(
    conn: sa.Connection,
    *,
    account_id: int,
    plan: MembershipPlan,
    workspace_id: int | None,
    changed_at: float,
    coalesce_s: float,
    now: float,
    known_states: dict[int, str] | None = None,
) -> tuple[Counter[str], int]:
    """Upsert users and memberships, register unknown audiences, mark users dirty in
    ``workspace_id`` (None while deliveries wait). Returns counts by reason (unresolved
    profiles, skipped and applied memberships) and the number of memberships applied.

    ``known_states``: the account's audience states already read in this transaction, where
    nothing else can change them (SQLite's one writer); read ones are added to it, so the
    parts of a large message read each audience once."""
    return apply_membership_plans(
        conn,
        account_id=account_id,
        plans=[(changed_at, plan)],
        workspace_id=workspace_id,
        coalesce_s=coalesce_s,
        now=now,
        known_states=known_states,
    )


def apply_membership_plans(
    conn: sa.Connection,
    *,
    account_id: int,
    plans: Sequence[tuple[float, MembershipPlan]],
    workspace_id: int | None,
    coalesce_s: float,
    now: float,
    known_states: dict[int, str] | None = None,
) -> tuple[Counter[str], int]:
    """:func:`apply_membership_plan` of several ``(changed_at, plan)`` of one account, in
    arrival order, as one write per table (:func:`audience_sync.core.membership.merge_plans`
    folds them with the effect of applying them in turn). The counts are those of applying
    each in turn; the number returned is of membership rows written."""
    merged = plans[0][1] if len(plans) == 1 else None
    folded = None if merged is not None else merge_plans(plans)
    names = merged.audience_names if merged is not None else folded.audience_names  # type: ignore[union-attr]
    counts: Counter[str] = Counter()
    for _, plan in plans:
        counts.update(plan.unresolved)

    audience_ids = sorted(names)
    memo = {} if known_states is None else known_states
    missing = [a for a in audience_ids if a not in memo]
    if missing:
        memo.update(audience_states(conn, account_id, missing))
    states = {a: memo[a] for a in audience_ids if a in memo}
    unknown = {a: names[a] for a in audience_ids if a not in states}
    if unknown:
        insert_audiences(conn, account_id, unknown, now)
        memo.update(dict.fromkeys(unknown, AudienceState.ACTIVE))
    removed = {a for a, s in states.items() if s == AudienceState.REMOVED}

    # PostgreSQL: writers that may run at once (a request applying its own message) lock the
    # rows in one order, so they cannot deadlock. SQLite has one writer: sorting was a tenth of
    # its applier's instructions, for nothing.
    in_order: t.Callable[[t.Any], t.Any] = sorted if conn.dialect.name == "postgresql" else list
    if merged is not None:
        changed_at = plans[0][0]
        changes = in_order(merged.memberships.items())
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), is_member in changes
            if audience_id not in removed
        ]
        skipped = len(changes) - len(membership_rows)
        users = merged.users
    else:
        assert folded is not None
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), (is_member, changed_at) in in_order(
                folded.memberships.items()
            )
            if audience_id not in removed
        ]
        skipped = sum(1 for _, plan in plans for (_, a) in plan.memberships if a in removed)
        users = folded.users
    if skipped:
        counts[IntakeCounter.AUDIENCE_REMOVED] += skipped
    applied = sum(len(plan.memberships) for _, plan in plans) - skipped

    external_ids = sorted(users)
    _upsert_users(conn, account_id, users, external_ids, now)
    if membership_rows:
        if conn.dialect.name == "postgresql":
            postgresql.upsert_memberships(conn, rows=membership_rows)
        else:
            executemany(
                conn,
                "memberships.upsert",
                lambda: _memberships_upsert(conn),
                _MEMBERSHIP_COLUMNS,
                membership_rows,
            )
    if applied:
        counts[IntakeCounter.MEMBERSHIPS_APPLIED] += applied

    if workspace_id is not None and external_ids:
        enqueue(conn, workspace_id, external_ids, now=now, delay_s=coalesce_s)
    return counts, len(membership_rows)


_MEMBERSHIP_COLUMNS = ("account_id", "external_id", "audience_id", "is_member", "changed_at")
_USER_COLUMNS = ("account_id", "external_id", "email", "push_tokens", "mpid", "updated_at")


def _memberships_upsert(conn: sa.Connection) -> t.Any:
    stmt = insert(conn, memberships)
    return stmt.on_conflict_do_update(
        index_elements=[
            memberships.c.account_id,
            memberships.c.external_id,
            memberships.c.audience_id,
        ],
        set_={"is_member": stmt.excluded.is_member, "changed_at": stmt.excluded.changed_at},
        # A late-arriving older message never overrides a newer one.
        where=memberships.c.changed_at <= stmt.excluded.changed_at,
    )


def _upsert_users(
    conn: sa.Connection,
    account_id: int,
    updates: Mapping[str, UserUpdate],
    external_ids: Sequence[str],
    now: float,
) -> None:
    """Email and mpid are only overwritten by a value; push tokens are the union, newest 10.
    ``external_ids``: the users of ``updates``, sorted."""
    with_tokens = sorted(e for e, u in updates.items() if u.push_tokens)
    stored: dict[str, list[str]] = {}
    for chunk in chunks(with_tokens):
        query = (
            sa.select(users.c.external_id, users.c.push_tokens)
            .where(users.c.account_id == account_id, users.c.external_id.in_(chunk))
            .with_for_update()
        )
        stored.update((e, tokens or []) for e, tokens in conn.execute(query))

    token_rows, new_token_rows, plain_rows = [], [], []
    for external_id in external_ids:
        update = updates[external_id]
        if update.push_tokens:
            tokens = merge_push_tokens(stored.get(external_id, []), update.push_tokens)
            row = (account_id, external_id, update.email, json.dumps(tokens), update.mpid, now)
            (token_rows if external_id in stored else new_token_rows).append(row)
        else:
            plain_rows.append((account_id, external_id, update.email, "[]", update.mpid, now))
    if conn.dialect.name == "postgresql":
        # One statement per kind, the rows as arrays (see the plain INSERT's reason below).
        postgresql.upsert_users(conn, rows=token_rows, push_tokens=True)
        postgresql.insert_users(conn, rows=new_token_rows)
        postgresql.upsert_users(conn, rows=plain_rows, push_tokens=False)
        return
    executemany(
        conn,
        "users.upsert+tokens",
        lambda: _users_upsert(conn, push_tokens=True),
        _USER_COLUMNS,
        token_rows,
    )
    # A user that did not exist when its tokens were read (there was nothing to lock): a plain
    # INSERT, so that if a concurrent request created it meanwhile this one fails on the
    # primary key and the intake runs it again, then reading (and locking) that row and merging
    # both token sets. An upsert here would overwrite the other request's tokens.
    executemany(
        conn,
        "users.insert+tokens",
        lambda: insert(conn, users),
        _USER_COLUMNS,
        new_token_rows,
    )
    executemany(
        conn,
        "users.upsert",
        lambda: _users_upsert(conn, push_tokens=False),
        _USER_COLUMNS,
        plain_rows,
    )


def _users_upsert(conn: sa.Connection, *, push_tokens: bool) -> t.Any:
    stmt = insert(conn, users)
    set_: dict[str, t.Any] = {
        "email": sa.func.coalesce(stmt.excluded.email, users.c.email),
        "mpid": sa.func.coalesce(stmt.excluded.mpid, users.c.mpid),
        "updated_at": stmt.excluded.updated_at,
    }
    if push_tokens:
        set_["push_tokens"] = stmt.excluded.push_tokens
    return stmt.on_conflict_do_update(
        index_elements=[users.c.account_id, users.c.external_id], set_=set_
    )
