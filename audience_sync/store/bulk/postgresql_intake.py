"""The PostgreSQL statements of the Firehose intake and the journal's applier: the message id
and plan in one statement, and a round's users, memberships and outbox marks as one statement
per table, the rows as one array per column unpacked by ``unnest`` (``executemany`` sent a
statement per row: a parse, bind and execute on the server and the parameters adapted one row
at a time in Python). See :mod:`audience_sync.store.bulk`; SQLite keeps its ``executemany``
statements (:mod:`audience_sync.store.statements`)."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.store.bulk.driver import execute, fetch_all


def _columns(rows: Sequence[tuple[t.Any, ...]], first: int) -> list[list[t.Any]]:
    """The values of each column from ``first`` on, as lists (``unnest``'s arrays)."""
    return [list(column) for column in zip(*rows, strict=True)][first:]


_USERS_FROM = (
    "SELECT v.account_id, v.external_id, v.email, v.push_tokens::jsonb, v.mpid, v.updated_at "
    "FROM unnest(%(accounts)s::bigint[], %(ids)s::text[], %(emails)s::text[], "
    "%(tokens)s::text[], %(mpids)s::text[], %(at)s::double precision[]) "
    "AS v(account_id, external_id, email, push_tokens, mpid, updated_at)"
)


def _user_params(rows: Sequence[tuple[t.Any, ...]]) -> dict[str, t.Any]:
    accounts, ids, emails, tokens, mpids, at = _columns(rows, 0)
    return {
        "accounts": accounts,
        "ids": ids,
        "emails": emails,
        "tokens": tokens,
        "mpids": mpids,
        "at": at,
    }


def upsert_users(
    conn: sa.Connection, *, rows: Sequence[tuple[t.Any, ...]], push_tokens: bool
) -> None:
    """Upsert ``(account_id, external_id, email, push_tokens JSON, mpid, updated_at)`` rows (one
    per user, sorted): email and mpid are only overwritten by a value, push tokens only when
    ``push_tokens`` (the rows then hold the merged tokens)."""
    if not rows:
        return
    tokens = ", push_tokens = excluded.push_tokens" if push_tokens else ""
    execute(
        conn,
        "INSERT INTO users AS u (account_id, external_id, email, push_tokens, mpid, updated_at) "
        f"{_USERS_FROM} ON CONFLICT (account_id, external_id) DO UPDATE SET "
        "email = coalesce(excluded.email, u.email), mpid = coalesce(excluded.mpid, u.mpid), "
        f"updated_at = excluded.updated_at{tokens}",
        _user_params(rows),
    )


def insert_users(conn: sa.Connection, *, rows: Sequence[tuple[t.Any, ...]]) -> None:
    """Insert new users (rows as :func:`upsert_users`); a user created meanwhile fails the
    statement on the primary key (the caller's transaction runs again and merges)."""
    if rows:
        execute(
            conn,
            "INSERT INTO users (account_id, external_id, email, push_tokens, mpid, updated_at) "
            f"{_USERS_FROM}",
            _user_params(rows),
        )


def upsert_memberships(conn: sa.Connection, *, rows: Sequence[tuple[t.Any, ...]]) -> None:
    """Upsert ``(account_id, external_id, audience_id, is_member, changed_at)`` rows (one per
    key, sorted); a row newer than the one given is left as it is."""
    if not rows:
        return
    accounts, ids, audience_ids, members, changed = _columns(rows, 0)
    execute(
        conn,
        "INSERT INTO memberships AS m (account_id, external_id, audience_id, is_member, "
        "changed_at) SELECT * FROM unnest(%(accounts)s::bigint[], %(ids)s::text[], "
        "%(audiences)s::bigint[], %(members)s::boolean[], %(changed)s::double precision[]) "
        "ON CONFLICT (account_id, external_id, audience_id) DO UPDATE SET "
        "is_member = excluded.is_member, changed_at = excluded.changed_at "
        "WHERE m.changed_at <= excluded.changed_at",
        {
            "accounts": accounts,
            "ids": ids,
            "audiences": audience_ids,
            "members": members,
            "changed": changed,
        },
    )


def enqueue(
    conn: sa.Connection,
    *,
    workspace_id: int,
    external_ids: Sequence[str],
    pending: str,
    dead: str,
    due_at: float,
    now: float,
) -> None:
    """:func:`audience_sync.store.outbox.enqueue` and its rule for a row already there, as one
    statement (PostgreSQL, unlike SQLite, leaves an index alone when the values it holds are
    unchanged): ``external_ids`` sorted and distinct. (In ``SET`` every ``o.`` column is the
    row's value before it.)"""
    if not external_ids:
        return
    execute(
        conn,
        "INSERT INTO outbox AS o (workspace_id, external_id, state, generation, due_at, "
        "attempts, enqueued_at) SELECT %(ws)s, v.external_id, %(pending)s, 1, %(due)s, 0, "
        "%(now)s FROM unnest(%(ids)s::text[]) AS v(external_id) "
        "ON CONFLICT (workspace_id, external_id) DO UPDATE SET generation = o.generation + 1, "
        "state = %(pending)s, "
        "due_at = CASE WHEN o.state = %(dead)s THEN excluded.due_at ELSE o.due_at END, "
        "attempts = CASE WHEN o.state = %(dead)s THEN 0 ELSE o.attempts END, "
        "first_failure_at = CASE WHEN o.state = %(dead)s THEN NULL ELSE o.first_failure_at END",
        {
            "ws": workspace_id,
            "ids": list(external_ids),
            "pending": pending,
            "dead": dead,
            "due": due_at,
            "now": now,
        },
    )


def accept_message(
    conn: sa.Connection,
    *,
    message_id: str,
    message_type: str,
    account_id: int,
    changed_at: float,
    profiles: int,
    plan: bytes,
    now: float,
) -> int | None:
    """Record a membership change's id and append its plan to the journal in one statement
    (atomic alone); the entry's seq, or None when the id was recorded before (a duplicate:
    nothing is appended). A concurrent first insert of the same id makes this one wait for it."""
    rows = fetch_all(
        conn,
        "WITH m AS (INSERT INTO firehose_messages (id, type, account_id, received_at) "
        "VALUES (%(id)s, %(type)s, %(account)s, %(now)s) ON CONFLICT (id) DO NOTHING "
        "RETURNING id) INSERT INTO firehose_journal (account_id, message_id, changed_at, "
        "received_at, profiles, plan) SELECT %(account)s, m.id, %(changed)s, %(now)s, "
        "%(profiles)s, %(plan)s FROM m RETURNING seq",
        {
            "id": message_id,
            "type": message_type,
            "account": account_id,
            "now": now,
            "changed": changed_at,
            "profiles": profiles,
            "plan": plan,
        },
    )
    return int(rows[0][0]) if rows else None
