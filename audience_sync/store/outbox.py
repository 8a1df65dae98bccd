"""The dirty-user outbox: one row per Braze user ``(workspace_id, external_id)``.

Verbs: :func:`enqueue` (from the Firehose intake and the jobs),
and, for senders, :func:`claim`, :func:`renew`, :func:`finish`, :func:`release` (no attempt
spent), :func:`record_failures` (retry later or dead-letter) and :func:`replay`.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable, Mapping, Sequence

import sqlalchemy as sa

from audience_sync.core.state import Claim, Failure
from audience_sync.core.states import OutboxState, WorkspaceState
from audience_sync.store import bulk
from audience_sync.store.bulk import json_text, postgresql_delivery, postgresql_intake
from audience_sync.store.schema import outbox
from audience_sync.store.statements import chunks, executemany, insert

_COLUMNS = (
    "workspace_id",
    "external_id",
    "state",
    "generation",
    "due_at",
    "attempts",
    "enqueued_at",
)


def enqueue(
    conn: sa.Connection,
    workspace_id: int,
    external_ids: Iterable[str],
    *,
    now: float,
    delay_s: float = 0.0,
) -> int:
    """Mark Braze users of one workspace dirty, in the caller's transaction; returns how many.

    A new row is due at ``now + delay_s`` (the coalescing window). An existing pending row keeps
    its due time and attempts (a change does not cut short a backoff) but its generation is
    bumped, so a sender that claimed it before this change will not drop it. A dead row comes
    back to life, due at ``now + delay_s``, with no attempts and no first failure: the change
    is new work.
    """
    due_at = now + delay_s
    if conn.dialect.name == "postgresql":
        ids = sorted(set(external_ids))
        postgresql_intake.enqueue(
            conn,
            workspace_id=workspace_id,
            external_ids=ids,
            pending=OutboxState.PENDING.value,
            dead=OutboxState.DEAD.value,
            due_at=due_at,
            now=now,
        )
        return len(ids)
    # Sorted: concurrent transactions then lock rows in one order and cannot deadlock.
    ids = sorted(set(external_ids))
    rows = [
        (workspace_id, external_id, OutboxState.PENDING.value, 1, due_at, 0, now)
        for external_id in ids
    ]
    executemany(
        conn, "outbox.enqueue", lambda: _bump_generation(insert(conn, outbox)), _COLUMNS, rows
    )
    _revive_dead(conn, workspace_id, ids, due_at=due_at)
    return len(rows)


def _bump_generation(stmt: t.Any) -> t.Any:
    """SQLite's upsert for a user already in the outbox: its generation only.
    SQLite rewrites the index entries of every indexed column an UPDATE sets, changed or not:
    also setting ``state`` and ``due_at`` (``ix_outbox_state_due``) made each re-enqueue of a
    pending user twice as costly. Dead rows are then revived by :func:`_revive_dead`."""
    return stmt.on_conflict_do_update(
        index_elements=[outbox.c.workspace_id, outbox.c.external_id],
        set_={"generation": outbox.c.generation + 1},
    )


def _revive_dead(
    conn: sa.Connection, workspace_id: int, external_ids: Sequence[str], *, due_at: float
) -> None:
    """The rest of :func:`enqueue`'s rule on SQLite, for the dead rows among
    ``external_ids`` (their generation already bumped): looked for only when the outbox holds
    a dead row at all, which its state index answers at once."""
    if not external_ids or not bulk.sqlite.any_in_state(conn, OutboxState.DEAD.value):
        return
    for chunk in chunks(external_ids):
        conn.execute(
            outbox.update()
            .where(
                outbox.c.workspace_id == workspace_id,
                outbox.c.external_id.in_(chunk),
                outbox.c.state == OutboxState.DEAD,
            )
            .values(
                state=OutboxState.PENDING,
                due_at=due_at,
                attempts=0,
                first_failure_at=None,
            )
        )


def claim(
    conn: sa.Connection,
    *,
    worker_id: str,
    now: float,
    lease_s: float,
    limit: int,
    workspace_id: int | None = None,
    include_suspended: bool = False,
) -> list[Claim]:
    """Lease up to ``limit`` due users, oldest due first, in one statement.

    On PostgreSQL the candidate rows are locked ``FOR UPDATE SKIP LOCKED`` so concurrent senders
    never pick the same user (:func:`~audience_sync.store.bulk.postgresql_delivery.claim`); the
    lease (``claimed_until``) makes a crashed sender's users claimable again once it runs out.
    SQLite serialises writers (``BEGIN IMMEDIATE``), which gives the same exclusivity within its
    single sending process (:func:`~audience_sync.store.bulk.sqlite.claim`).
    """
    leased = postgresql_delivery.claim if conn.dialect.name == "postgresql" else bulk.sqlite.claim
    return [
        Claim(
            workspace_id=ws,
            external_id=external_id,
            generation=generation,
            attempts=attempts,
            first_failure_at=first_failure_at,
            in_flight=in_flight,
        )
        for ws, external_id, generation, attempts, first_failure_at, in_flight in leased(
            conn,
            worker_id=worker_id,
            now=now,
            until=now + lease_s,
            limit=limit,
            pending=OutboxState.PENDING.value,
            active=None if include_suspended else WorkspaceState.ACTIVE.value,
            workspace_id=workspace_id,
        )
    ]


def finish(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    external_ids: Sequence[str],
    now: float,
    next_due_at: float,
) -> set[str]:
    """The users' writes succeeded (or were not needed): drop their rows, unless a change came
    in while they were in flight; those stay pending, due at ``next_due_at`` (the minimum
    resend spacing), with a clean failure record.

    Returns the users this sender still held (a lease lost to another sender is left alone).
    The DELETE goes first: a change committed between the two statements then finds its row
    still leased by us, and the release below hands it back, instead of matching neither.
    """
    return bulk.of(conn).finish(
        conn,
        workspace_id=workspace_id,
        worker_id=worker_id,
        external_ids=external_ids,
        next_due_at=next_due_at,
    )


def renew(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    in_flight: Mapping[str, Mapping[str, t.Any] | None],
    until: float,
) -> set[str]:
    """Right before requests: extend this sender's lease on their users and record,
    write-ahead, what each may change (``in_flight``, per user). Returns the users still held.

    The request (bounded by ``braze.timeout_s``, shorter than the lease) then always completes
    inside the lease, so no other sender can claim the same user meanwhile; and if this process
    dies before recording the answer, the next sender knows which values to write again.
    """
    return renew_encoded(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        rows=encode_in_flight(in_flight),
        until=until,
    )


def encode_in_flight(
    in_flight: Mapping[str, Mapping[str, t.Any] | None],
) -> list[tuple[str, str | None]]:
    """``(external_id, JSON text)`` rows of write-ahead records for :func:`renew_encoded`,
    built before the transaction; users planned alike share one record, encoded once."""
    texts: dict[int, str | None] = {}
    rows = []
    for external_id, record in in_flight.items():
        key = id(record)
        if key not in texts:
            texts[key] = json_text(record)
        rows.append((external_id, texts[key]))
    return rows


def renew_encoded(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    rows: Sequence[tuple[str, str | None]],
    until: float,
) -> set[str]:
    """:func:`renew` with the records already encoded (:func:`encode_in_flight`)."""
    if not rows:
        return set()
    return bulk.of(conn).renew(
        conn, workspace_id=workspace_id, worker_id=worker_id, until=until, rows=rows
    )


def _mine(worker_id: str, workspace_id: int, external_ids: Sequence[str]) -> sa.ColumnElement[bool]:
    return sa.and_(
        outbox.c.workspace_id == workspace_id,
        outbox.c.external_id.in_(external_ids),
        outbox.c.claimed_by == worker_id,
    )


def held(
    conn: sa.Connection, *, worker_id: str, workspace_id: int, external_ids: Sequence[str]
) -> set[str]:
    """The users of ``external_ids`` this sender still holds a lease on."""
    mine: set[str] = set()
    for chunk in chunks(external_ids):
        query = sa.select(outbox.c.external_id).where(_mine(worker_id, workspace_id, chunk))
        mine.update(conn.execute(query).scalars())
    return mine


def release(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    due_at: Mapping[str, float],
    reason: str | None = None,
    in_flight: Mapping[str, Mapping[str, t.Any] | None] | None = None,
) -> None:
    """Give users back without spending an attempt (rate limit, suspension, resend spacing).

    ``in_flight`` restores each user's write-ahead record when Braze certainly applied nothing
    (a 429 or a refusal); omitted, the record is left as it is.
    """
    if not due_at:
        return
    if in_flight is None:
        rows = [(e, d, None) for e, d in due_at.items()]
    else:
        rows = [(e, d, json_text(in_flight.get(e))) for e, d in due_at.items()]
    bulk.of(conn).release(
        conn,
        workspace_id=workspace_id,
        worker_id=worker_id,
        reason=reason,
        rows=rows,
        set_in_flight=in_flight is not None,
    )


def _current_in_flight(
    conn: sa.Connection, workspace_id: int, external_ids: Sequence[str]
) -> dict[str, str | None]:
    """The stored write-ahead records (as JSON text) of ``external_ids``."""
    found: dict[str, str | None] = {}
    for chunk in chunks(external_ids):
        rows = conn.execute(
            sa.select(outbox.c.external_id, outbox.c.in_flight).where(
                outbox.c.workspace_id == workspace_id, outbox.c.external_id.in_(chunk)
            )
        )
        found.update((e, json_text(f)) for e, f in rows)
    return found


def record_failures(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    failures: Sequence[Failure],
    keep_in_flight: bool = False,
) -> None:
    """Persist the retry decision of each failed user (durable ``due_at``), or bury it.

    ``keep_in_flight``: leave each write-ahead record as it is (``Failure.in_flight`` is not
    used), for failures where whether a request went out is unknown.
    """
    if not failures:
        return
    rows = [
        (
            f.external_id,
            f.attempts,
            f.first_failure_at,
            f.retry_at if f.retry_at is not None else f.first_failure_at,
            (OutboxState.PENDING if f.retry_at is not None else OutboxState.DEAD).value,
            f.reason,
            json_text(f.in_flight),
        )
        for f in failures
    ]
    if keep_in_flight:
        # Rare (an unexpected error): keep each write-ahead record by writing back what the
        # row holds now, so the one bulk statement serves both cases.
        current = _current_in_flight(conn, workspace_id, [f.external_id for f in failures])
        rows = [(*r[:6], current.get(r[0])) for r in rows]
    bulk.of(conn).record_failures(
        conn,
        workspace_id=workspace_id,
        worker_id=worker_id,
        pending=OutboxState.PENDING.value,
        rows=rows,
    )


def replay(conn: sa.Connection, *, now: float, workspace_ids: Sequence[int] | None = None) -> int:
    """Re-queue dead-lettered users: pending again, due now, with a fresh attempt budget."""
    stmt = outbox.update().where(outbox.c.state == OutboxState.DEAD)
    if workspace_ids is not None:
        stmt = stmt.where(outbox.c.workspace_id.in_(workspace_ids))
    result = conn.execute(
        stmt.values(
            state=OutboxState.PENDING,
            due_at=now,
            attempts=0,
            first_failure_at=None,
            claimed_by=None,
            claimed_until=None,
            generation=outbox.c.generation + 1,
        )
    )
    return result.rowcount or 0


def backlog(conn: sa.Connection) -> dict[str, int]:
    """Rows per state: ``{"pending": n, "dead": m}``."""
    rows = conn.execute(sa.select(outbox.c.state, sa.func.count()).group_by(outbox.c.state))
    return {state: count for state, count in rows}
