"""The intake queue: new events (deduplicated by id), held events, and cutting queued
events into batches."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.currents.batching import BatchPlan, PlannedBatch, QueuedEvent
from audience_sync.store.currents.base import (
    BatchState,
    EventState,
    chunks,
    count,
)
from audience_sync.store.currents.formed import PlanConflictError, store_batches
from audience_sync.store.schema import (
    currents_batches,
    currents_dedup,
    currents_events,
)
from audience_sync.store.statements import executemany

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@dataclass(slots=True, kw_only=True)
class NewEvent:
    """A mapped event to queue; ``feed`` None means held (``no_feed``). Not frozen: one is
    built per imported event, and nothing changes it once built."""

    event_id: str
    feed: str | None
    external_user_id: str
    app_id: str | None
    platform: str | None
    envelope_json: str
    event_json: str


DEDUP_ROWS_PER_STATEMENT = 2000
"""Ids per claiming statement (two parameters each, under every driver's limit)."""


def claim_new_ids(
    conn: sa.Connection, event_ids: Sequence[str], *, now: float, window_s: float
) -> set[str]:
    """Record ``event_ids`` as seen; return those not seen within ``window_s`` (new work).

    On PostgreSQL, one upsert per 2,000 ids: an id is inserted, or its key refreshed if it was
    last seen before the window, and either way returned; a key seen within the window is left
    as it is and not returned. Concurrent intakes of the same id: the primary key lets exactly
    one insert win; the other then sees its key within the window. (It was an UPDATE and then
    an INSERT through SQLAlchemy's per-row parameter handling: 82,000 more instructions per
    imported event.) On SQLite the same upsert cost more than a read and an insert (its
    RETURNING rows), so SQLite keeps those.
    """
    unique = list(dict.fromkeys(event_ids))
    if conn.dialect.name == "sqlite":
        return _claim_new_ids_sqlite(conn, unique, now=now, window_s=window_s)
    mark = _PLACEHOLDER[conn.dialect.paramstyle]
    table = currents_dedup.name
    fresh: set[str] = set()
    for start in range(0, len(unique), DEDUP_ROWS_PER_STATEMENT):
        chunk = unique[start : start + DEDUP_ROWS_PER_STATEMENT]
        values = ", ".join([f"({mark}, {mark})"] * len(chunk))
        params: list[object] = []
        for event_id in chunk:
            params += (event_id, now)
        params.append(now - window_s)
        fresh.update(
            conn.exec_driver_sql(
                f"INSERT INTO {table} (event_id, seen_at) VALUES {values} "
                "ON CONFLICT (event_id) DO UPDATE SET seen_at = excluded.seen_at "
                f"WHERE {table}.seen_at < {mark} RETURNING event_id",
                tuple(params),
            ).scalars()
        )
    return fresh


def _claim_new_ids_sqlite(
    conn: sa.Connection, unique: list[str], *, now: float, window_s: float
) -> set[str]:
    """SQLite: the transaction holds the one write lock from its start (BEGIN IMMEDIATE), so
    reading which ids are known and then writing is race-free; plain multi-row statements
    instead of RETURNING through SQLAlchemy's per-row machinery (this runs for every event)."""
    known: dict[str, float] = {}
    for chunk in chunks(unique):
        marks = ",".join("?" * len(chunk))
        known.update(
            conn.exec_driver_sql(
                f"SELECT event_id, seen_at FROM {currents_dedup.name} WHERE event_id IN ({marks})",
                tuple(chunk),
            ).all()
        )
    cutoff = now - window_s
    expired = [i for i, seen_at in known.items() if seen_at < cutoff]
    for chunk in chunks(expired):
        marks = ",".join("?" * len(chunk))
        conn.exec_driver_sql(
            f"UPDATE {currents_dedup.name} SET seen_at = ? WHERE event_id IN ({marks})",
            (now, *chunk),
        )
    new = [i for i in unique if i not in known]
    executemany(
        conn,
        "currents_dedup_insert",
        lambda: sa.insert(currents_dedup),
        ("event_id", "seen_at"),
        [(i, now) for i in new],
    )
    return {*new, *expired}


ENQUEUE_COLUMNS = (
    "event_id",
    "feed",
    "external_user_id",
    "app_id",
    "platform",
    "state",
    "received_at",
    "envelope",
    "event",
    "reason",
)


def enqueue(
    conn: sa.Connection,
    events: Sequence[NewEvent],
    *,
    now: float,
    dead: Mapping[str, str] | None = None,
) -> int:
    """Queue mapped events in arrival order (the order given), in the caller's transaction;
    those of ``dead`` (event id → reason) go straight to the dead-letter store.

    Through :func:`~audience_sync.store.statements.executemany` (tuples, multi-row ``VALUES``
    on SQLite): this runs for every imported event, and SQLAlchemy's per-row parameter
    processing cost more than the insert itself.
    """
    if not events:
        return 0
    queued, held, gone = str(EventState.QUEUED), str(EventState.HELD), str(EventState.DEAD)
    dead = dead or {}
    executemany(
        conn,
        "currents_enqueue",
        lambda: sa.insert(currents_events),
        ENQUEUE_COLUMNS,
        [
            (
                e.event_id,
                e.feed,
                e.external_user_id,
                e.app_id,
                e.platform,
                gone if e.event_id in dead else queued if e.feed else held,
                now,
                e.envelope_json,
                e.event_json,
                dead.get(e.event_id) if e.feed else "no_feed",
            )
            for e in events
        ],
    )
    return len(events)


def backlog(conn: sa.Connection) -> int:
    """Events accepted and not yet delivered nor dead-lettered (queued, held or batched)."""
    waiting = conn.execute(
        sa.select(sa.func.count())
        .select_from(currents_events)
        .where(currents_events.c.state != EventState.DEAD)
    ).scalar_one()
    batched = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(currents_batches.c.events), 0)).where(
            currents_batches.c.state == BatchState.PENDING
        )
    ).scalar_one()
    return int(waiting) + int(batched)


def lock_feed_for_planning(conn: sa.Connection, feed: str) -> None:
    """Serialise planners of one feed until the transaction ends (PostgreSQL; SQLite has one
    writer anyway). Two plans committing out of order could otherwise let a user's later
    batch be claimed before the earlier one exists."""
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"currents-plan:{feed}".encode()).digest()[:8], "big")
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key - 2**63)))


def queued_events(conn: sa.Connection, feed: str, *, limit: int) -> list[QueuedEvent]:
    """The oldest queued events of a feed (locked against other planners on PostgreSQL)."""
    mark = _PLACEHOLDER[conn.dialect.paramstyle]
    lock = " FOR UPDATE SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    # Driver SQL and tuples: up to PLAN_EVENTS rows per call, where SQLAlchemy's Row objects
    # cost more than the query.
    rows = conn.exec_driver_sql(
        "SELECT seq, event_id, feed, external_user_id, received_at, envelope, event "
        f"FROM {currents_events.name} WHERE state = {mark} AND feed = {mark} "
        f"ORDER BY seq LIMIT {int(limit)}{lock}",
        (str(EventState.QUEUED), feed),
    ).all()
    return [
        QueuedEvent(
            seq=seq,
            event_id=event_id,
            feed=feed_,
            external_user_id=user,
            received_at=received_at,
            envelope_json=envelope,
            event_json=event,
        )
        for seq, event_id, feed_, user, received_at, envelope, event in rows
    ]


def is_planning_due(conn: sa.Connection, feed: str, *, older_than: float, enough: int) -> bool:
    """Whether a feed's queued events should be cut into batches now: its oldest has waited
    since ``older_than``, or ``enough`` are queued (batches then hold more events per user)."""
    c = currents_events.c
    queued = (
        sa.select(c.seq, c.received_at)
        .where(c.state == EventState.QUEUED, c.feed == feed)
        .order_by(c.seq)
    )
    oldest = conn.execute(queued.limit(1)).first()
    if oldest is None:
        return False
    if oldest.received_at <= older_than:
        return True
    return conn.execute(queued.offset(enough - 1).limit(1)).first() is not None


def feeds_with_queued(conn: sa.Connection) -> list[str]:
    """Feeds that have events waiting for a batch."""
    c = currents_events.c
    return list(
        conn.execute(
            sa.select(c.feed).where(c.state == EventState.QUEUED).group_by(c.feed)
        ).scalars()
    )


def save_plan(
    conn: sa.Connection,
    plan: BatchPlan,
    *,
    now: float,
    claim: tuple[str, float] | None = None,
    claim_limit: int = 1000,
) -> list[PlannedBatch]:
    """Store formed batches (their events move into them) and dead-letter events that cannot
    be sent, in the caller's transaction.

    ``claim=(worker_id, lease_until)`` leases up to ``claim_limit`` new batches to that sender
    at once (no more than it can send within the lease), except a batch whose user already has
    an older pending batch in the feed (order of arrival), and a user's second new batch.
    Returns the batches leased.

    Raises:
        PlanConflictError: some planned events are no longer queued.
    """
    c = currents_events.c
    seqs = [s for b in plan.batches for s in b.seqs] + [s for s, _ in plan.rejected]
    deleted = 0
    mark = _PLACEHOLDER[conn.dialect.paramstyle]
    for chunk in chunks([s for b in plan.batches for s in b.seqs]):
        # Driver SQL: SQLAlchemy re-renders an expanding IN list for every chunk.
        deleted += conn.exec_driver_sql(
            f"DELETE FROM {currents_events.name} WHERE state = {mark} "
            f"AND seq IN ({', '.join([mark] * len(chunk))})",
            (str(EventState.QUEUED), *chunk),
        ).rowcount
    if plan.rejected:
        result = conn.execute(
            sa.update(currents_events)
            .where(c.seq == sa.bindparam("b_seq"), c.state == EventState.QUEUED)
            .values(state=EventState.DEAD, reason=sa.bindparam("b_reason")),
            [{"b_seq": s, "b_reason": r} for s, r in plan.rejected],
        )
        deleted += result.rowcount
        count(conn, {"dead_letter": len(plan.rejected)}, now=now)
    if deleted != len(seqs):
        raise PlanConflictError(f"{len(seqs) - deleted} planned event(s) changed")
    claimed: list[PlannedBatch] = []
    if claim is not None and plan.batches:
        blocked = _users_with_pending(conn, plan.batches)
        for batch in plan.batches:
            key = (batch.feed, batch.external_user_id)
            if key not in blocked and len(claimed) < claim_limit:
                claimed.append(batch)
            blocked.add(key)
    store_batches(
        conn,
        plan.batches,
        now=now,
        due_at=now,
        leased={b.batch_id for b in claimed},
        claim=claim,
    )
    return claimed


def _users_with_pending(
    conn: sa.Connection, batches: Sequence[PlannedBatch]
) -> set[tuple[str, str]]:
    """(feed, user) pairs among ``batches`` that already have a pending batch."""
    b = currents_batches.c
    found: set[tuple[str, str]] = set()
    by_feed: dict[str, list[str]] = {}
    for batch in batches:
        by_feed.setdefault(batch.feed, []).append(batch.external_user_id)
    for feed, users in by_feed.items():
        for chunk in chunks(sorted(set(users))):
            rows = conn.execute(
                sa.select(b.external_user_id)
                .where(b.feed == feed, b.state == BatchState.PENDING, b.external_user_id.in_(chunk))
                .distinct()
            ).scalars()
            found.update((feed, user) for user in rows)
    return found


def reroute_held(
    conn: sa.Connection, route: Callable[[str | None, str | None], str | None], *, now: float
) -> int:
    """Give held events (``no_feed``) to a feed that now takes them; returns how many moved."""
    e = currents_events.c
    held = conn.execute(
        sa.select(e.seq, e.app_id, e.platform).where(e.state == EventState.HELD)
    ).all()
    moves = [
        {"b_seq": r.seq, "b_feed": feed}
        for r in held
        if (feed := route(r.app_id, r.platform)) is not None
    ]
    if moves:
        conn.execute(
            sa.update(currents_events)
            .where(e.seq == sa.bindparam("b_seq"), e.state == EventState.HELD)
            .values(feed=sa.bindparam("b_feed"), state=EventState.QUEUED, reason=None),
            moves,
        )
    return len(moves)


def prune_dedup(conn: sa.Connection, *, now: float, window_s: float) -> int:
    """Delete dedup keys older than the window; returns how many."""
    result = conn.execute(
        sa.delete(currents_dedup).where(currents_dedup.c.seen_at < now - window_s)
    )
    return int(result.rowcount or 0)
