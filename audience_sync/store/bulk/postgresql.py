"""The set-based outbox statements on PostgreSQL: the rows travel as one JSON array, unpacked
by ``jsonb_to_recordset``. See :mod:`audience_sync.store.bulk`."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import orjson
import sqlalchemy as sa

from audience_sync.store.bulk.driver import execute, execute_and_commit, fetch_all, fetch_each


def _records(names: Sequence[str], rows: Sequence[tuple[t.Any, ...]]) -> str:
    # JSON values arrive encoded as text (or None): embed them as JSON, not as strings.
    return orjson.dumps(
        [
            {
                name: (orjson.Fragment(value) if name == "in_flight" and value else value)
                for name, value in zip(names, row, strict=True)
            }
            for row in rows
        ]
    ).decode()


def json_rows(rows: Sequence[tuple[t.Any, ...]], *, json_columns: tuple[int, ...]) -> str:
    """``rows`` as one JSON array of arrays, for ``jsonb_array_elements`` (a row's values by
    position: ``r ->> 0``...): cheaper to build than :func:`_records`' objects. The values of
    ``json_columns`` are JSON text (or None), embedded as JSON; rows sharing one text (users
    planned alike) share its fragment."""
    fragments: dict[int, orjson.Fragment] = {}

    def fragment(text: str | None) -> orjson.Fragment | None:
        if text is None:
            return None
        found = fragments.get(id(text))
        if found is None:
            found = fragments[id(text)] = orjson.Fragment(text)
        return found

    if json_columns == (1,):  # (key, JSON): the write-ahead records
        return orjson.dumps([(row[0], fragment(row[1])) for row in rows]).decode()
    return orjson.dumps(
        [[fragment(v) if i in json_columns else v for i, v in enumerate(row)] for row in rows]
    ).decode()


def renew(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    until: float,
    rows: Sequence[tuple[str, str | None]],
) -> set[str]:
    """See :func:`audience_sync.store.bulk.sqlite.renew`."""
    if not rows:
        return set()
    result = fetch_all(
        conn,
        "UPDATE outbox AS o SET claimed_until = %(until)s, in_flight = v.r -> 1 "
        "FROM jsonb_array_elements(%(rows)s::jsonb) AS v(r) "
        "WHERE o.workspace_id = %(ws)s AND o.external_id = v.r ->> 0 "
        "AND o.claimed_by = %(worker)s RETURNING o.external_id",
        {
            "until": until,
            "rows": json_rows(rows, json_columns=(1,)),
            "ws": workspace_id,
            "worker": worker_id,
        },
    )
    return {r[0] for r in result}


def release(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    reason: str | None,
    rows: Sequence[tuple[str, float, str | None]],
    set_in_flight: bool,
) -> None:
    """See :func:`audience_sync.store.bulk.sqlite.release`."""
    if not rows:
        return
    in_flight = ", in_flight = v.in_flight" if set_in_flight else ""
    execute(
        conn,
        "UPDATE outbox AS o SET claimed_by = NULL, claimed_until = NULL, due_at = v.due_at, "
        f"last_reason = coalesce(%(reason)s, o.last_reason){in_flight} "
        "FROM jsonb_to_recordset(%(rows)s::jsonb) "
        "AS v(external_id text, due_at double precision, in_flight jsonb) "
        "WHERE o.workspace_id = %(ws)s AND o.external_id = v.external_id "
        "AND o.claimed_by = %(worker)s",
        {
            "reason": reason,
            "rows": _records(("external_id", "due_at", "in_flight"), rows),
            "ws": workspace_id,
            "worker": worker_id,
        },
    )


def record_failures(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    pending: str,
    rows: Sequence[tuple[str, int, float | None, float | None, str, str, str | None]],
) -> None:
    """See :func:`audience_sync.store.bulk.sqlite.record_failures`."""
    if not rows:
        return
    names = (
        "external_id",
        "attempts",
        "first_failure_at",
        "due_at",
        "state",
        "reason",
        "in_flight",
    )
    execute(
        conn,
        "UPDATE outbox AS o SET claimed_by = NULL, claimed_until = NULL, attempts = v.attempts, "
        "first_failure_at = v.first_failure_at, due_at = v.due_at, "
        "state = CASE WHEN o.generation != o.claimed_generation THEN %(pending)s "
        "ELSE v.state END, last_reason = v.reason, in_flight = v.in_flight "
        "FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(external_id text, attempts integer, "
        "first_failure_at double precision, due_at double precision, state text, reason text, "
        "in_flight jsonb) "
        "WHERE o.workspace_id = %(ws)s AND o.external_id = v.external_id "
        "AND o.claimed_by = %(worker)s",
        {
            "pending": pending,
            "rows": _records(names, rows),
            "ws": workspace_id,
            "worker": worker_id,
        },
    )


def save_acknowledged(
    conn: sa.Connection,
    *,
    workspace_id: int,
    now: float,
    rows: Sequence[tuple[str, str, str, float | None, str]],
) -> None:
    """See :func:`audience_sync.store.bulk.sqlite.save_acknowledged`."""
    if not rows:
        return
    records = orjson.dumps(
        [
            {
                "external_id": external_id,
                "attributes": orjson.Fragment(attributes),
                "flags": orjson.Fragment(flags),
                "last_write_at": last_write_at,
                "outcome": outcome,
            }
            for external_id, attributes, flags, last_write_at, outcome in rows
        ]
    ).decode()
    execute(
        conn,
        "INSERT INTO braze_users AS b (workspace_id, external_id, attributes, flags, "
        "last_write_at, last_outcome, last_outcome_at, updated_at) "
        "SELECT %(ws)s, v.external_id, v.attributes, v.flags, v.last_write_at, v.outcome, "
        "%(now)s, %(now)s FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(external_id text, "
        "attributes jsonb, flags jsonb, last_write_at double precision, outcome text) "
        "ON CONFLICT (workspace_id, external_id) DO UPDATE SET attributes = excluded.attributes, "
        "flags = excluded.flags, last_write_at = coalesce(excluded.last_write_at, "
        "b.last_write_at), last_outcome = excluded.last_outcome, "
        "last_outcome_at = excluded.last_outcome_at, updated_at = excluded.updated_at",
        {"ws": workspace_id, "now": now, "rows": records},
    )


def finish(
    conn: sa.Connection,
    *,
    workspace_id: int,
    worker_id: str,
    external_ids: Sequence[str],
    next_due_at: float,
) -> set[str]:
    """See :func:`audience_sync.store.bulk.sqlite.finish` (the ids go as one array)."""
    if not external_ids:
        return set()
    mine = "workspace_id = %(ws)s AND claimed_by = %(worker)s AND external_id = ANY(%(ids)s)"
    params = {"ws": workspace_id, "worker": worker_id, "ids": list(external_ids)}
    deleted = fetch_all(
        conn,
        f"DELETE FROM outbox WHERE {mine} AND generation = claimed_generation "
        "RETURNING external_id",
        params,
    )
    owned = {r[0] for r in deleted}
    released = fetch_all(
        conn,
        "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL, due_at = %(due)s, "
        "attempts = 0, first_failure_at = NULL, last_reason = NULL, in_flight = NULL "
        f"WHERE {mine} RETURNING external_id",
        params | {"due": next_due_at},
    )
    owned.update(r[0] for r in released)
    return owned


def snapshot_rows(
    conn: sa.Connection, *, workspace_id: int, accounts: Sequence[int], ids: Sequence[str]
) -> tuple[list[tuple[t.Any, ...]], list[tuple[t.Any, ...]], list[tuple[t.Any, ...]]]:
    """See :func:`audience_sync.store.bulk.sqlite.snapshot_rows` (JSONB arrives decoded); the
    three reads in one round trip."""
    params = {"accounts": list(accounts), "ids": list(ids), "ws": workspace_id}
    acknowledged = (
        "SELECT external_id, attributes, flags, last_write_at FROM braze_users "
        "WHERE workspace_id = %(ws)s AND external_id = ANY(%(ids)s)",
        params,
    )
    if not (accounts and ids):
        return [], [], [tuple(r) for r in fetch_each(conn, [acknowledged])[0]]
    where = "account_id = ANY(%(accounts)s) AND external_id = ANY(%(ids)s)"
    users, members, acked = fetch_each(
        conn,
        [
            (
                "SELECT account_id, external_id, email, push_tokens, updated_at FROM users "
                f"WHERE {where}",
                params,
            ),
            (
                "SELECT account_id, external_id, audience_id, is_member FROM memberships "
                f"WHERE {where}",
                params,
            ),
            acknowledged,
        ],
    )
    return [tuple(r) for r in users], [tuple(r) for r in members], [tuple(r) for r in acked]


def connection_rows(conn: sa.Connection, *, workspace_id: int) -> list[tuple[t.Any, ...]]:
    """See :func:`audience_sync.store.bulk.sqlite.connection_rows`."""
    return [
        tuple(r)
        for r in fetch_all(
            conn,
            "SELECT account_id, account_settings, settings_fingerprint, state FROM connections "
            "WHERE workspace_id = %(ws)s",
            {"ws": workspace_id},
        )
    ]


def audience_rows(
    conn: sa.Connection, *, accounts: Sequence[int], audience_ids: Sequence[int]
) -> list[tuple[t.Any, ...]]:
    """See :func:`audience_sync.store.bulk.sqlite.audience_rows`."""
    if not accounts or not audience_ids:
        return []
    return [
        tuple(r)
        for r in fetch_all(
            conn,
            "SELECT account_id, audience_id, name, state, cleanup FROM audiences "
            "WHERE account_id = ANY(%(accounts)s) AND audience_id = ANY(%(audiences)s)",
            {"accounts": list(accounts), "audiences": list(audience_ids)},
        )
    ]


def field_flag_rows(
    conn: sa.Connection, *, workspace_id: int, ids: Sequence[str]
) -> list[tuple[t.Any, ...]]:
    """See :func:`audience_sync.store.bulk.sqlite.field_flag_rows`."""
    if not ids:
        return []
    return [
        tuple(r)
        for r in fetch_all(
            conn,
            "SELECT external_id, field, fingerprint, flag FROM field_flags "
            "WHERE workspace_id = %(ws)s AND external_id = ANY(%(ids)s)",
            {"ws": workspace_id, "ids": list(ids)},
        )
    ]


def add_counts(conn: sa.Connection, *, rows: Sequence[tuple[str, str, str, int]]) -> None:
    """See :func:`audience_sync.store.bulk.sqlite.add_counts`."""
    if not rows:
        return
    execute(
        conn,
        "INSERT INTO counters AS c (day, scope, reason, count) "
        "SELECT v.day, v.scope, v.reason, v.n FROM jsonb_to_recordset(%(rows)s::jsonb) "
        "AS v(day text, scope text, reason text, n bigint) "
        "ON CONFLICT (day, scope, reason) DO UPDATE SET count = c.count + excluded.count",
        {"rows": _records(("day", "scope", "reason", "n"), rows)},
    )


def add_datapoints(conn: sa.Connection, *, rows: Sequence[tuple[str, int, int, int, int]]) -> None:
    """See :func:`audience_sync.store.bulk.sqlite.add_datapoints`."""
    if not rows:
        return
    execute(
        conn,
        "INSERT INTO datapoints AS d (day, workspace_id, account_id, audience_id, points) "
        "SELECT v.day, v.workspace_id, v.account_id, v.audience_id, v.points "
        "FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(day text, workspace_id integer, "
        "account_id bigint, audience_id bigint, points bigint) "
        "ON CONFLICT (day, workspace_id, account_id, audience_id) "
        "DO UPDATE SET points = d.points + excluded.points",
        {"rows": _records(("day", "workspace_id", "account_id", "audience_id", "points"), rows)},
    )


def add_datapoints_and_counts(
    conn: sa.Connection,
    *,
    datapoints: Sequence[tuple[str, int, int, int, int]],
    counts: Sequence[tuple[str, str, str, int]],
    commit: bool = False,
) -> None:
    """:func:`add_datapoints` and :func:`add_counts` as one statement (one round trip);
    ``commit``: and the caller's COMMIT in the same round trip (the transaction's last
    statement, :func:`~audience_sync.store.bulk.driver.execute_and_commit`)."""
    (execute_and_commit if commit else execute)(
        conn,
        "WITH points_added AS (INSERT INTO datapoints AS d (day, workspace_id, account_id, "
        "audience_id, points) SELECT v.day, v.workspace_id, v.account_id, v.audience_id, "
        "v.points FROM jsonb_to_recordset(%(points)s::jsonb) AS v(day text, workspace_id "
        "integer, account_id bigint, audience_id bigint, points bigint) "
        "ON CONFLICT (day, workspace_id, account_id, audience_id) "
        "DO UPDATE SET points = d.points + excluded.points) "
        "INSERT INTO counters AS c (day, scope, reason, count) "
        "SELECT v.day, v.scope, v.reason, v.n FROM jsonb_to_recordset(%(counts)s::jsonb) "
        "AS v(day text, scope text, reason text, n bigint) "
        "ON CONFLICT (day, scope, reason) DO UPDATE SET count = c.count + excluded.count",
        {
            "points": _records(
                ("day", "workspace_id", "account_id", "audience_id", "points"), datapoints
            ),
            "counts": _records(("day", "scope", "reason", "n"), counts),
        },
    )
