"""The sender's PostgreSQL statements that do in one round trip what took several: the claim
(candidates locked and leased in one statement), the snapshot (every read in one pipeline) and
the record of the accepted users of a transaction's requests (outbox DELETE, release UPDATE and
acknowledged upsert as one statement of data-modifying CTEs). See
:mod:`audience_sync.store.bulk`; each is tested on PostgreSQL in
``tests/integration/test_bulk_statements.py``."""

from __future__ import annotations

import typing as t
from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.store.bulk.driver import fetch_all, fetch_each
from audience_sync.store.bulk.postgresql import json_rows


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
    ``active`` unless None, of one workspace if given, locked ``FOR UPDATE SKIP LOCKED`` and
    leased in one statement (one round trip, with the transaction's BEGIN); returns
    ``(workspace_id, external_id, generation, attempts, first_failure_at, in_flight)`` per row,
    oldest due first."""
    where = (
        "state = %(pending)s AND due_at <= %(now)s "
        "AND (claimed_until IS NULL OR claimed_until < %(now)s)"
    )
    if workspace_id is not None:
        where += " AND workspace_id = %(ws)s"
    if active is not None:
        where += " AND workspace_id IN (SELECT id FROM workspaces WHERE state = %(active)s)"
    rows = fetch_all(
        conn,
        "WITH c AS MATERIALIZED (SELECT workspace_id, external_id, due_at FROM outbox "
        f"WHERE {where} ORDER BY due_at LIMIT %(limit)s FOR UPDATE OF outbox SKIP LOCKED) "
        "UPDATE outbox AS o SET claimed_by = %(worker)s, claimed_until = %(until)s, "
        "claimed_generation = o.generation FROM c "
        "WHERE o.workspace_id = c.workspace_id AND o.external_id = c.external_id "
        "RETURNING c.due_at, o.workspace_id, o.external_id, o.generation, o.attempts, "
        "o.first_failure_at, o.in_flight",
        {
            "pending": pending,
            "now": now,
            "ws": workspace_id,
            "active": active,
            "limit": limit,
            "worker": worker_id,
            "until": until,
        },
    )
    rows.sort(key=lambda r: r[0])
    return [tuple(r[1:]) for r in rows]


def finish_acknowledged(
    conn: sa.Connection,
    *,
    worker_id: str,
    now: float,
    rows: Sequence[tuple[int, str, float, str, str, float | None, str]],
) -> set[tuple[int, str]]:
    """``finish`` and ``save_acknowledged`` (:mod:`audience_sync.store.bulk.postgresql`) of many
    requests' accepted users, of any
    workspaces, as one statement: ``(workspace_id, external_id, next_due_at, attributes JSON,
    flags JSON, last_write_at, outcome)`` per user. Returns the ``(workspace_id, external_id)``
    this sender held, deleted or released; only theirs are acknowledged (see
    :func:`audience_sync.store.outbox.renew`).

    The DELETE and the UPDATE of the data-modifying CTEs see one snapshot, so each takes the
    rows the other does not (by their generation then). A change committed after that snapshot
    makes the DELETE skip its row (re-checked once locked): that user is in neither and is not
    returned, still leased by this sender; the caller finishes it
    with ``finish``.
    """
    if not rows:
        return set()
    records = json_rows(rows, json_columns=(3, 4))
    mine = "o.workspace_id = v.ws AND o.external_id = v.external_id AND o.claimed_by = %(worker)s"
    owned = fetch_all(
        conn,
        "WITH v AS MATERIALIZED (SELECT (r ->> 0)::integer AS ws, r ->> 1 AS external_id, "
        "(r ->> 2)::double precision AS due, r -> 3 AS attributes, r -> 4 AS flags, "
        "(r ->> 5)::double precision AS last_write_at, r ->> 6 AS outcome "
        "FROM jsonb_array_elements(%(rows)s::jsonb) AS r), "
        f"gone AS (DELETE FROM outbox AS o USING v WHERE {mine} "
        "AND o.generation = o.claimed_generation RETURNING o.workspace_id, o.external_id), "
        "kept AS (UPDATE outbox AS o SET claimed_by = NULL, claimed_until = NULL, "
        "due_at = v.due, attempts = 0, first_failure_at = NULL, last_reason = NULL, "
        f"in_flight = NULL FROM v WHERE {mine} "
        "AND o.generation IS DISTINCT FROM o.claimed_generation "
        "RETURNING o.workspace_id, o.external_id), "
        "owned AS (SELECT * FROM gone UNION ALL SELECT * FROM kept), "
        "acked AS (INSERT INTO braze_users AS b (workspace_id, external_id, attributes, flags, "
        "last_write_at, last_outcome, last_outcome_at, updated_at) "
        "SELECT v.ws, v.external_id, v.attributes, v.flags, v.last_write_at, v.outcome, "
        "%(now)s, %(now)s FROM v JOIN owned "
        "ON owned.workspace_id = v.ws AND owned.external_id = v.external_id "
        "ON CONFLICT (workspace_id, external_id) DO UPDATE SET attributes = excluded.attributes, "
        "flags = excluded.flags, last_write_at = coalesce(excluded.last_write_at, "
        "b.last_write_at), last_outcome = excluded.last_outcome, "
        "last_outcome_at = excluded.last_outcome_at, updated_at = excluded.updated_at) "
        "SELECT workspace_id, external_id FROM owned",
        {"rows": records, "worker": worker_id, "now": now},
    )
    return {(r[0], r[1]) for r in owned}


def text_array(values: Sequence[str]) -> str:
    """``values`` as a PostgreSQL array literal (``%(name)s::text[]``)."""
    return (
        '{"' + '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values) + '"}'
        if values
        else "{}"
    )


def snapshot_all(
    conn: sa.Connection, *, workspace_id: int, ids: Sequence[str], active: str | None
) -> tuple[list[tuple[t.Any, ...]], ...]:
    """Every read of a snapshot (:func:`audience_sync.store.snapshot.load_snapshot`) in one
    round trip: the workspace's connections (``connection_rows`` of
    :mod:`audience_sync.store.bulk.postgresql`), the desired rows of
    those of its connections whose state is ``active`` (None: all of them), with each
    membership's audience row joined (``audience_rows``: name, state, cleanup; NULL when
    missing), the acknowledged rows and the field flags of ``ids``."""
    accounts = "SELECT account_id FROM connections WHERE workspace_id = %(ws)s"
    if active is not None:
        accounts += " AND state = %(active)s"
    # IN (subquery), not = ANY(ARRAY(subquery)): PostgreSQL plans the latter as a scan of the
    # whole table (its InitPlan hides the accounts from the index scan's estimate).
    where = f"m.account_id IN ({accounts}) AND m.external_id = ANY(%(ids)s::text[])"
    # One array literal for the four statements: psycopg dumps a list element by element in
    # Python, four times.
    params = {"ws": workspace_id, "ids": text_array(ids), "active": active}
    results = fetch_each(
        conn,
        [
            (
                "SELECT account_id, account_settings, settings_fingerprint, state "
                "FROM connections WHERE workspace_id = %(ws)s",
                params,
            ),
            (
                "SELECT account_id, external_id, email, push_tokens, updated_at FROM users m "
                f"WHERE {where}",
                params,
            ),
            (
                "SELECT m.account_id, m.external_id, m.audience_id, m.is_member, a.name, "
                "a.state, a.cleanup FROM memberships m LEFT JOIN audiences a "
                "ON a.account_id = m.account_id AND a.audience_id = m.audience_id "
                f"WHERE {where}",
                params,
            ),
            (
                "SELECT external_id, attributes, flags, last_write_at FROM braze_users "
                "WHERE workspace_id = %(ws)s AND external_id = ANY(%(ids)s::text[])",
                params,
            ),
            (
                "SELECT external_id, field, fingerprint, flag FROM field_flags "
                "WHERE workspace_id = %(ws)s AND external_id = ANY(%(ids)s::text[])",
                params,
            ),
        ],
    )
    return tuple([tuple(r) for r in rows] for rows in results)
