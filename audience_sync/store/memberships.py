"""Users and their audience memberships, as the Firehose intake applies them (SPEC §4.1).

Order independence: a membership row carries the ``timestamp_ms`` of the message that set it,
and an upsert only overwrites a row that is not newer, so a late retry of an older message
never undoes a newer one.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.core.membership import MembershipPlan, merge_push_tokens
from audience_sync.core.states import AudienceState, IntakeCounter
from audience_sync.store.audiences import audience_states, insert_audiences
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
    counts: Counter[str] = Counter(plan.unresolved)

    audience_ids = sorted(plan.audience_names)
    memo = {} if known_states is None else known_states
    missing = [a for a in audience_ids if a not in memo]
    if missing:
        memo.update(audience_states(conn, account_id, missing))
    states = {a: memo[a] for a in audience_ids if a in memo}
    unknown = {a: plan.audience_names[a] for a in audience_ids if a not in states}
    if unknown:
        insert_audiences(conn, account_id, unknown, now)
        memo.update(dict.fromkeys(unknown, AudienceState.ACTIVE))
    removed = {a for a, s in states.items() if s == AudienceState.REMOVED}

    if removed:
        changes = sorted(plan.memberships.items())
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), is_member in changes
            if audience_id not in removed
        ]
        skipped = len(changes) - len(membership_rows)
        if skipped:
            counts[IntakeCounter.AUDIENCE_REMOVED] += skipped
    else:
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), is_member in sorted(plan.memberships.items())
        ]

    external_ids = sorted(plan.users)
    _upsert_users(conn, account_id, plan, external_ids, now)
    if membership_rows:
        executemany(
            conn,
            "memberships.upsert",
            lambda: _memberships_upsert(conn),
            _MEMBERSHIP_COLUMNS,
            membership_rows,
        )
        counts[IntakeCounter.MEMBERSHIPS_APPLIED] += len(membership_rows)

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
    plan: MembershipPlan,
    external_ids: Sequence[str],
    now: float,
) -> None:
    """Email and mpid are only overwritten by a value; push tokens are the union, newest 10.
    ``external_ids``: the plan's users, sorted."""
    with_tokens = sorted(e for e, u in plan.users.items() if u.push_tokens)
    stored: dict[str, list[str]] = {}
    for chunk in chunks(with_tokens):
        query = (
            sa.select(users.c.external_id, users.c.push_tokens)
            .where(users.c.account_id == account_id, users.c.external_id.in_(chunk))
            .with_for_update()
        )
        stored.update((e, tokens or []) for e, tokens in conn.execute(query))

    token_rows, new_token_rows, plain_rows = [], [], []
    updates = plan.users
    for external_id in external_ids:
        update = updates[external_id]
        if update.push_tokens:
            tokens = merge_push_tokens(stored.get(external_id, []), update.push_tokens)
            row = (account_id, external_id, update.email, json.dumps(tokens), update.mpid, now)
            (token_rows if external_id in stored else new_token_rows).append(row)
        else:
            plain_rows.append((account_id, external_id, update.email, "[]", update.mpid, now))
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
