"""The set-based outbox statements on SQLite (3.35+: ``UPDATE ... FROM`` and ``RETURNING``).
See :mod:`audience_sync.store.bulk`."""

from __future__ import annotations

import itertools
import typing as t
from collections.abc import Sequence

import orjson
import sqlalchemy as sa

from audience_sync.store.bulk.driver import execute, fetch_all

ROWS_PER_STATEMENT = 500
"""Rows per statement: well under SQLite's 32,766 bound parameters."""


def _values(rows: Sequence[tuple[t.Any, ...]], names: Sequence[str]) -> str:
    group = "(" + ", ".join("?" * len(names)) + ")"
    columns = ", ".join(f"column{i + 1} AS {name}" for i, name in enumerate(names))
    return f"(SELECT {columns} FROM (VALUES {', '.join([group] * len(rows))}))"


def _chunks(rows: Sequence[tuple[t.Any, ...]]) -> t.Iterator[Sequence[tuple[t.Any, ...]]]:
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]


def renew(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    until: float,
    rows: Sequence[tuple[str, str | None]],
) -> set[str]:
    """Extend the lease and set ``in_flight`` of ``(external_id, in_flight)`` rows this worker
    holds; returns the external ids updated."""
    held: set[str] = set()
    for chunk in _chunks(rows):
        sql = (
            "UPDATE outbox SET claimed_until = ?, in_flight = v.in_flight "
            f"FROM {_values(chunk, ('external_id', 'in_flight'))} AS v "
            "WHERE outbox.workspace_id = ? AND outbox.external_id = v.external_id "
            "AND outbox.claimed_by = ? RETURNING outbox.external_id"
        )
        params = (until, *itertools.chain.from_iterable(chunk), workspace_id, worker_id)
        held.update(r[0] for r in fetch_all(conn, sql, params))
    return held


def release(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    reason: str | None,
    rows: Sequence[tuple[str, float, str | None]],
    set_in_flight: bool,
) -> None:
    """Hand back ``(external_id, due_at, in_flight)`` rows without an attempt; ``in_flight`` is
    written only with ``set_in_flight``."""
    in_flight = ", in_flight = v.in_flight" if set_in_flight else ""
    for chunk in _chunks(rows):
        sql = (
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL, due_at = v.due_at, "
            f"last_reason = coalesce(?, outbox.last_reason){in_flight} "
            f"FROM {_values(chunk, ('external_id', 'due_at', 'in_flight'))} AS v "
            "WHERE outbox.workspace_id = ? AND outbox.external_id = v.external_id "
            "AND outbox.claimed_by = ?"
        )
        params = (reason, *itertools.chain.from_iterable(chunk), workspace_id, worker_id)
        execute(conn, sql, params)


def record_failures(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    pending: str,
    rows: Sequence[tuple[str, int, float | None, float | None, str, str, str | None]],
) -> None:
    """Record ``(external_id, attempts, first_failure_at, due_at, state, reason, in_flight)``
    of failed rows; a row whose generation moved on while in flight stays ``pending``."""
    names = (
        "external_id",
        "attempts",
        "first_failure_at",
        "due_at",
        "state",
        "reason",
        "in_flight",
    )
    for chunk in _chunks(rows):
        sql = (
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL, attempts = v.attempts, "
            "first_failure_at = v.first_failure_at, due_at = v.due_at, "
            "state = CASE WHEN outbox.generation != outbox.claimed_generation THEN ? "
            "ELSE v.state END, last_reason = v.reason, in_flight = v.in_flight "
            f"FROM {_values(chunk, names)} AS v "
            "WHERE outbox.workspace_id = ? AND outbox.external_id = v.external_id "
            "AND outbox.claimed_by = ?"
        )
        params = (pending, *itertools.chain.from_iterable(chunk), workspace_id, worker_id)
        execute(conn, sql, params)


_UPSERT_ACKNOWLEDGED_TAIL = (
    " ON CONFLICT (workspace_id, external_id) DO UPDATE SET attributes = excluded.attributes, "
    "flags = excluded.flags, last_write_at = coalesce(excluded.last_write_at, "
    "braze_users.last_write_at), last_outcome = excluded.last_outcome, "
    "last_outcome_at = excluded.last_outcome_at, updated_at = excluded.updated_at"
)


def save_acknowledged(
    conn: sa.Connection,
    *,
    workspace_id: int,
    now: float,
    rows: Sequence[tuple[str, str, str, float | None, str]],
) -> None:
    """Upsert ``(external_id, attributes, flags, last_write_at, outcome)`` rows of acknowledged
    state (JSON as text); a row without ``last_write_at`` keeps the stored one."""
    for chunk in _chunks(rows):
        group = "(?, ?, ?, ?, ?, ?, ?, ?)"
        sql = (
            "INSERT INTO braze_users (workspace_id, external_id, attributes, flags, "
            "last_write_at, last_outcome, last_outcome_at, updated_at) VALUES "
            + ", ".join([group] * len(chunk))
            + _UPSERT_ACKNOWLEDGED_TAIL
        )
        params: list[t.Any] = []
        for external_id, attributes, flags, last_write_at, outcome in chunk:
            params += [
                workspace_id,
                external_id,
                attributes,
                flags,
                last_write_at,
                outcome,
                now,
                now,
            ]
        execute(conn, sql, tuple(params))


def finish(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    external_ids: Sequence[str],
    next_due_at: float,
) -> set[str]:
    """Drop the rows this worker holds whose generation did not move; release the others due at
    ``next_due_at`` with a clean failure record. Returns the external ids it held."""
    owned: set[str] = set()
    for start in range(0, len(external_ids), ROWS_PER_STATEMENT):
        chunk = list(external_ids[start : start + ROWS_PER_STATEMENT])
        marks = ", ".join("?" * len(chunk))
        mine = f"workspace_id = ? AND claimed_by = ? AND external_id IN ({marks})"
        params = (workspace_id, worker_id, *chunk)
        deleted = fetch_all(
            conn,
            f"DELETE FROM outbox WHERE {mine} AND generation = claimed_generation "
            "RETURNING external_id",
            params,
        )
        owned.update(r[0] for r in deleted)
        if len(deleted) == len(chunk):
            continue  # every row was dropped: none is left to release
        released = fetch_all(
            conn,
            "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL, due_at = ?, "
            "attempts = 0, first_failure_at = NULL, last_reason = NULL, in_flight = NULL "
            f"WHERE {mine} RETURNING external_id",
            (next_due_at, *params),
        )
        owned.update(r[0] for r in released)
    return owned


def _json(value: str | None) -> t.Any:
    return None if value is None else orjson.loads(value)


def snapshot_rows(
    conn: sa.Connection, *, workspace_id: int, accounts: Sequence[int], ids: Sequence[str]
) -> tuple[list[tuple[t.Any, ...]], list[tuple[t.Any, ...]], list[tuple[t.Any, ...]]]:
    """The desired and acknowledged rows of a batch of users, as plain tuples (JSON decoded):
    ``(account_id, external_id, email, push_tokens, updated_at)`` users,
    ``(account_id, external_id, audience_id, is_member)`` memberships and
    ``(external_id, attributes, flags, last_write_at)`` acknowledged rows."""
    users: list[tuple[t.Any, ...]] = []
    members: list[tuple[t.Any, ...]] = []
    acknowledged: list[tuple[t.Any, ...]] = []
    in_accounts = ", ".join("?" * len(accounts))
    for start in range(0, len(ids), ROWS_PER_STATEMENT):
        chunk = tuple(ids[start : start + ROWS_PER_STATEMENT])
        in_ids = ", ".join("?" * len(chunk))
        if accounts:
            where = f"account_id IN ({in_accounts}) AND external_id IN ({in_ids})"
            for a, e, email, tokens, updated in fetch_all(
                conn,
                "SELECT account_id, external_id, email, push_tokens, updated_at FROM users "
                f"WHERE {where}",
                (*accounts, *chunk),
            ):
                users.append((a, e, email, _json(tokens), updated))
            members.extend(
                fetch_all(
                    conn,
                    "SELECT account_id, external_id, audience_id, is_member FROM memberships "
                    f"WHERE {where}",
                    (*accounts, *chunk),
                )
            )
        for e, attributes, flags, last_write_at in fetch_all(
            conn,
            "SELECT external_id, attributes, flags, last_write_at FROM braze_users "
            f"WHERE workspace_id = ? AND external_id IN ({in_ids})",
            (workspace_id, *chunk),
        ):
            acknowledged.append((e, _json(attributes), _json(flags), last_write_at))
    return users, members, acknowledged


def connection_rows(conn: sa.Connection, *, workspace_id: int) -> list[tuple[t.Any, ...]]:
    """``(account_id, account_settings, settings_fingerprint, state)`` of the connections
    writing to one workspace (settings decoded)."""
    return [
        (account_id, _json(settings), fingerprint, state)
        for account_id, settings, fingerprint, state in fetch_all(
            conn,
            "SELECT account_id, account_settings, settings_fingerprint, state FROM connections "
            "WHERE workspace_id = ?",
            (workspace_id,),
        )
    ]


def audience_rows(
    conn: sa.Connection, *, accounts: Sequence[int], audience_ids: Sequence[int]
) -> list[tuple[t.Any, ...]]:
    """``(account_id, audience_id, name, state, cleanup)`` of ``audience_ids`` of ``accounts``
    (``cleanup`` as a bool)."""
    rows: list[tuple[t.Any, ...]] = []
    if not accounts:
        return rows
    in_accounts = ", ".join("?" * len(accounts))
    for start in range(0, len(audience_ids), ROWS_PER_STATEMENT):
        chunk = tuple(audience_ids[start : start + ROWS_PER_STATEMENT])
        for account_id, audience_id, name, state, cleanup in fetch_all(
            conn,
            "SELECT account_id, audience_id, name, state, cleanup FROM audiences "
            f"WHERE account_id IN ({in_accounts}) "
            f"AND audience_id IN ({', '.join('?' * len(chunk))})",
            (*accounts, *chunk),
        ):
            rows.append((account_id, audience_id, name, state, bool(cleanup)))
    return rows


def field_flag_rows(
    conn: sa.Connection, *, workspace_id: int, ids: Sequence[str]
) -> list[tuple[t.Any, ...]]:
    """``(external_id, field, fingerprint, flag)`` of the refused field values of ``ids``."""
    rows: list[tuple[t.Any, ...]] = []
    for start in range(0, len(ids), ROWS_PER_STATEMENT):
        chunk = tuple(ids[start : start + ROWS_PER_STATEMENT])
        rows.extend(
            fetch_all(
                conn,
                "SELECT external_id, field, fingerprint, flag FROM field_flags "
                f"WHERE workspace_id = ? AND external_id IN ({', '.join('?' * len(chunk))})",
                (workspace_id, *chunk),
            )
        )
    return rows


_ADD_COUNTS_TAIL = (
    " ON CONFLICT (day, scope, reason) DO UPDATE SET count = counters.count + excluded.count"
)
_ADD_DATAPOINTS_TAIL = (
    " ON CONFLICT (day, workspace_id, account_id, audience_id) "
    "DO UPDATE SET points = datapoints.points + excluded.points"
)


def add_counts(conn: sa.Connection, *, rows: Sequence[tuple[str, str, str, int]]) -> None:
    """Add ``(day, scope, reason, n)`` rows to the counters (keys unique within ``rows``)."""
    for chunk in _chunks(rows):
        execute(
            conn,
            "INSERT INTO counters (day, scope, reason, count) VALUES "
            + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            + _ADD_COUNTS_TAIL,
            tuple(itertools.chain.from_iterable(chunk)),
        )


def add_datapoints(conn: sa.Connection, *, rows: Sequence[tuple[str, int, int, int, int]]) -> None:
    """Add ``(day, workspace_id, account_id, audience_id, points)`` rows to the data points
    (keys unique within ``rows``)."""
    for chunk in _chunks(rows):
        execute(
            conn,
            "INSERT INTO datapoints (day, workspace_id, account_id, audience_id, points) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            + _ADD_DATAPOINTS_TAIL,
            tuple(itertools.chain.from_iterable(chunk)),
        )


def claim(
    conn: sa.Connection,
    *,
    worker_id: str,
    now: float,
    until: float,
    limit: int,
    pending: str,
    active: str | None,
    workspace_id: int | None,
) -> list[tuple[t.Any, ...]]:
    """Up to ``limit`` due, unleased ``pending`` rows, oldest due first, of workspaces in state
    ``active`` unless None, of one workspace if given, leased in the same statement:
    ``(workspace_id, external_id, generation, attempts, first_failure_at, in_flight)`` of each
    (``in_flight`` decoded). The rows are chosen by ``rowid``, so the UPDATE finds each by it
    (with the row value ``(workspace_id, external_id) IN (subquery)`` SQLite walked the
    workspace's primary-key index; with the keys as a list, 300 index seeks)."""
    sql = (
        "UPDATE outbox SET claimed_by = ?, claimed_until = ?, claimed_generation = generation "
        "WHERE rowid IN (SELECT rowid FROM outbox WHERE state = ? AND due_at <= ? "
        "AND (claimed_until IS NULL OR claimed_until < ?)"
    )
    params: list[t.Any] = [worker_id, until, pending, now, now]
    if workspace_id is not None:
        sql += " AND workspace_id = ?"
        params.append(workspace_id)
    if active is not None:
        sql += " AND workspace_id IN (SELECT id FROM workspaces WHERE state = ?)"
        params.append(active)
    sql += (
        " ORDER BY due_at LIMIT ?) "
        "RETURNING workspace_id, external_id, generation, attempts, first_failure_at, in_flight"
    )
    return [
        (ws, e, generation, attempts, first, _json(in_flight))
        for ws, e, generation, attempts, first, in_flight in fetch_all(conn, sql, (*params, limit))
    ]


def any_in_state(conn: sa.Connection, state: str) -> bool:
    """Whether any outbox row is in ``state`` (one step down its state index)."""
    return bool(fetch_all(conn, "SELECT 1 FROM outbox WHERE state = ? LIMIT 1", (state,)))
