"""Storing formed batches: queue positions for events that never become rows, the open batches
later events may join, and the insert (or extension) of planned batches.

An intake forms its events' batches in its own transaction (the queue is then written once per
event, as part of a batch, instead of as an event row, then a batch, then a delete): it
reserves queue positions from the events' sequence, so a batch's ``first_seq`` orders it among
every other batch and queued event, and it may extend its user's latest batch as long as no
sender has leased that batch yet (``leases = 0``: it was never in a request).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import orjson
import sqlalchemy as sa

from audience_sync.core.currents.batching import OPEN_BATCH_MAX_BYTES, OpenBatch, PlannedBatch
from audience_sync.store.currents.base import BatchState, chunks
from audience_sync.store.schema import (
    currents_batch_bodies,
    currents_batches,
    currents_events,
)
from audience_sync.store.statements import executemany

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


class PlanConflictError(Exception):
    """Events read for a plan changed before it was saved (expired, or taken by another
    planner): the transaction rolls back and the events are planned again later."""


def reserve_seqs(conn: sa.Connection, n: int) -> list[int]:
    """``n`` increasing queue positions from the events' sequence, never used by any event
    row (in the caller's transaction: on SQLite it holds the write lock; on PostgreSQL the
    caller holds the feed's planning lock, so positions commit in order per feed)."""
    if n <= 0:
        return []
    table = currents_events.name
    if conn.dialect.name == "postgresql":
        return list(
            conn.exec_driver_sql(
                f"SELECT nextval(pg_get_serial_sequence('{table}', 'seq')) "
                "FROM generate_series(1, %(n)s)",
                {"n": n},
            ).scalars()
        )
    last = conn.exec_driver_sql("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).scalar()
    if last is None:
        # No event row was ever inserted: the sequence row does not exist yet.
        last = conn.exec_driver_sql(f"SELECT coalesce(max(seq), 0) FROM {table}").scalar()
        conn.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, last + n)
        )
    else:
        conn.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (last + n, table))
    return list(range(last + 1, last + n + 1))


def open_batches(
    conn: sa.Connection, feed: str, users: Collection[str]
) -> dict[tuple[str, str], OpenBatch]:
    """The latest pending batch of each of ``users`` in ``feed``, where no sender ever leased
    it and its body is under :data:`OPEN_BATCH_MAX_BYTES` (locked on PostgreSQL until the
    transaction ends, so no sender leases it meanwhile)."""
    mark = _PLACEHOLDER[conn.dialect.paramstyle]
    postgresql = conn.dialect.name == "postgresql"
    table = currents_batches.name
    # SQLite without statistics would read every pending batch of the feed instead.
    by_user = "" if postgresql else " INDEXED BY ix_currents_batches_user"
    latest: dict[str, tuple[int, str, int]] = {}
    for chunk in chunks(sorted(users)):
        rows = conn.exec_driver_sql(
            f"SELECT external_user_id, first_seq, id, leases FROM {table}{by_user} "
            f"WHERE feed = {mark} AND external_user_id IN ({', '.join([mark] * len(chunk))}) "
            f"AND state = {mark}",
            (feed, *chunk, str(BatchState.PENDING)),
        ).all()
        for user, first_seq, batch_id, leases in rows:
            if user not in latest or first_seq > latest[user][0]:
                latest[user] = (first_seq, batch_id, leases)
    ids = [batch_id for _, batch_id, leases in latest.values() if leases == 0]
    found: dict[tuple[str, str], OpenBatch] = {}
    lock = " FOR UPDATE" if postgresql else ""
    for chunk in chunks(ids):
        rows = conn.exec_driver_sql(
            "SELECT id, external_user_id, first_seq, event_ids, received_at "
            f"FROM {table} WHERE id IN ({', '.join([mark] * len(chunk))}) AND leases = 0{lock}",
            tuple(chunk),
        ).all()
        bodies = read_bodies(conn, [row[2] for row in rows])
        for batch_id, user, first_seq, event_ids, received_at in rows:
            body = bodies.get(first_seq)
            if body is None or len(body) >= OPEN_BATCH_MAX_BYTES:
                continue
            found[(feed, user)] = OpenBatch(
                batch_id=batch_id,
                feed=feed,
                external_user_id=user,
                first_seq=first_seq,
                event_ids=tuple(orjson.loads(event_ids)),
                received_at=received_at,
                body=body,
            )
    return found


def read_bodies(conn: sa.Connection, first_seqs: Sequence[int]) -> dict[int, bytes]:
    """The bodies of batches (by ``first_seq``) whose rows the caller has just read and locked.

    A statement of its own, after the one that locks the rows: on PostgreSQL a join inside the
    locking statement could pair a batch row that an intake changed meanwhile (its latest
    version, once the lock is granted) with that batch's body as it was before, and the events
    that intake added would be sent by no one. Every change of a body locks its batch row first
    (:func:`open_batches`), so once the row is locked here the body read next is its own.
    """
    mark = _PLACEHOLDER[conn.dialect.paramstyle]
    found: dict[int, bytes] = {}
    for chunk in chunks(list(first_seqs)):
        found.update(
            (seq, bytes(body))
            for seq, body in conn.exec_driver_sql(
                f"SELECT first_seq, body FROM {currents_batch_bodies.name} "
                f"WHERE first_seq IN ({', '.join([mark] * len(chunk))})",
                tuple(chunk),
            )
        )
    return found


BATCH_COLUMNS = (
    "id",
    "feed",
    "external_user_id",
    "first_seq",
    "events",
    "event_ids",
    "state",
    "attempts",
    "leases",
    "due_at",
    "claimed_by",
    "claimed_until",
    "received_at",
    "retain_from",
    "created_at",
)


def store_batches(
    conn: sa.Connection,
    batches: Sequence[PlannedBatch],
    *,
    now: float,
    due_at: float,
    leased: Collection[str] = (),
    claim: tuple[str, float] | None = None,
) -> None:
    """Insert planned batches, pending from ``due_at``; those of ``leased`` leased to ``claim``
    (worker id, lease end). A batch that ``extends`` an open one replaces it (same row, new id
    and content, its due time kept). Bodies go to their own table, keyed by ``first_seq``.

    Raises:
        PlanConflictError: an extended batch was leased meanwhile.
    """
    worker, until = claim if claim is not None else (None, None)
    pending = str(BatchState.PENDING)
    fresh = [b for b in batches if b.extends is None]
    executemany(
        conn,
        "currents_batches_insert",
        lambda: sa.insert(currents_batches),
        BATCH_COLUMNS,
        [
            (
                b.batch_id,
                b.feed,
                b.external_user_id,
                b.first_seq,
                len(b.event_ids),
                orjson.dumps(b.event_ids).decode("utf-8"),
                pending,
                0,
                1 if b.batch_id in leased else 0,
                due_at,
                worker if b.batch_id in leased else None,
                until if b.batch_id in leased else None,
                b.received_at,
                b.received_at,
                now,
            )
            for b in fresh
        ],
    )
    executemany(
        conn,
        "currents_batch_bodies_insert",
        lambda: sa.insert(currents_batch_bodies),
        ("first_seq", "body"),
        [(b.first_seq, b.body) for b in fresh],
    )
    extended = [b for b in batches if b.extends is not None]
    if extended:
        mark = _PLACEHOLDER[conn.dialect.paramstyle]
        sql = (
            f"UPDATE {currents_batches.name} SET id = {mark}, events = {mark}, "
            f"event_ids = {mark} WHERE id = {mark} AND state = {mark} AND leases = 0"
        )
        # One executemany (both drivers sum its rowcount): one statement per extended batch
        # cost ~30 us each through SQLAlchemy, and about one imported event in ten extends.
        changed = conn.exec_driver_sql(
            sql,
            [
                (
                    b.batch_id,
                    len(b.event_ids),
                    orjson.dumps(b.event_ids).decode("utf-8"),
                    b.extends,
                    pending,
                )
                for b in extended
            ],
        ).rowcount
        if changed != len(extended):
            raise PlanConflictError(f"{len(extended) - changed} open batch(es) leased meanwhile")
        # An extension keeps its batch's first_seq, so its body row stays the same row.
        conn.exec_driver_sql(
            f"UPDATE {currents_batch_bodies.name} SET body = {mark} WHERE first_seq = {mark}",
            [(b.body, b.first_seq) for b in extended],
        )
