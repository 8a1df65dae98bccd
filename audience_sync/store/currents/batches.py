"""Formed batches: leases, outcomes, the dead-letter store, retention and replay."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.store.currents.base import (
    BatchState,
    EventState,
    chunks,
    count,
)
from audience_sync.store.currents.formed import read_bodies
from audience_sync.store.schema import (
    currents_batch_bodies,
    currents_batches,
    currents_events,
)


@dataclass(slots=True, kw_only=True)
class ClaimedBatch:
    """A batch a sender holds a lease on. Not frozen: a claim builds up to 1,000 of them, a
    frozen dataclass's ``__init__`` cost ~1 us more each, and nothing changes one once built."""

    id: str
    feed: str
    external_user_id: str
    first_seq: int
    events: int
    body: bytes
    attempts: int
    first_failure_at: float | None


_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}
_CLAIM_COLUMNS = (
    "b.id, b.feed, b.external_user_id, b.first_seq, b.events, b.attempts, b.first_failure_at"
)


def _claim(
    conn: sa.Connection,
    where: str,
    params: tuple[t.Any, ...],
    *,
    worker_id: str,
    now: float,
    lease_s: float,
    limit: int,
) -> list[ClaimedBatch]:
    """Lease the batches ``where`` (SQL on table alias ``b``, ``{m}`` for a placeholder)
    selects, oldest first. Driver SQL and tuples: this runs for every batch sent, where
    SQLAlchemy's statement and row machinery cost more than the queries."""
    m = _PLACEHOLDER[conn.dialect.paramstyle]
    table = currents_batches.name
    lock = " FOR UPDATE OF b SKIP LOCKED" if conn.dialect.name == "postgresql" else ""
    rows = conn.exec_driver_sql(
        f"SELECT {_CLAIM_COLUMNS} FROM {table} b WHERE {where.format(m=m)} "
        f"ORDER BY b.first_seq LIMIT {int(limit)}{lock}",
        params,
    ).all()
    # The bodies once the rows are locked (see read_bodies: not joined in the statement above).
    bodies = read_bodies(conn, [r[3] for r in rows])
    for chunk in chunks([r[0] for r in rows]):
        conn.exec_driver_sql(
            f"UPDATE {table} SET claimed_by = {m}, claimed_until = {m}, leases = leases + 1 "
            f"WHERE id IN ({', '.join([m] * len(chunk))})",
            (worker_id, now + lease_s, *chunk),
        )
    return [
        ClaimedBatch(
            id=batch_id,
            feed=feed,
            external_user_id=user,
            first_seq=first_seq,
            events=events,
            body=bodies[first_seq],
            attempts=attempts,
            first_failure_at=first_failure_at,
        )
        for batch_id, feed, user, first_seq, events, attempts, first_failure_at in rows
    ]


def claim_batches(
    conn: sa.Connection,
    *,
    feeds: Sequence[str],
    worker_id: str,
    now: float,
    lease_s: float,
    limit: int,
) -> list[ClaimedBatch]:
    """Lease the oldest due batches of ``feeds`` (the active ones), one per user at a time:
    never one while an older batch of its user and feed is still pending (arrival order)."""
    if not feeds:
        return []
    pending = str(BatchState.PENDING)
    # SQLite without statistics picks either index for the older-batch check, run to run, for
    # the same data; the state index reads every older pending batch of the feed for each
    # candidate (40 times the work of a 1,000-batch claim): the user index is named.
    by_user = " INDEXED BY ix_currents_batches_user" if conn.dialect.name == "sqlite" else ""
    where = (
        "b.state = {m} AND b.due_at <= {m} AND (b.claimed_until IS NULL OR b.claimed_until < {m}) "
        f"AND b.feed IN ({', '.join(['{m}'] * len(feeds))}) "
        f"AND NOT EXISTS (SELECT 1 FROM {currents_batches.name} e{by_user} "
        "WHERE e.feed = b.feed AND e.external_user_id = b.external_user_id "
        "AND e.state = {m} AND e.first_seq < b.first_seq)"
    )
    params = (pending, now, now, *feeds, pending)
    return _claim(conn, where, params, worker_id=worker_id, now=now, lease_s=lease_s, limit=limit)


def claim_probe(
    conn: sa.Connection, feed: str, *, worker_id: str, now: float, lease_s: float
) -> ClaimedBatch | None:
    """Lease the oldest pending batch of a paused feed, whatever its due time (the probe)."""
    where = "b.feed = {m} AND b.state = {m} AND (b.claimed_until IS NULL OR b.claimed_until < {m})"
    params = (feed, str(BatchState.PENDING), now)
    claimed = _claim(conn, where, params, worker_id=worker_id, now=now, lease_s=lease_s, limit=1)
    return claimed[0] if claimed else None


def _owned(ids: Sequence[str], worker_id: str) -> t.Any:
    b = currents_batches.c
    return sa.and_(b.id.in_(list(ids)), b.claimed_by == worker_id)


def finish(conn: sa.Connection, ids: Sequence[str], *, worker_id: str, now: float) -> int:
    """mParticle accepted these batches: delete them and their bodies (their events with
    them); returns the number of events done."""
    m = _PLACEHOLDER[conn.dialect.paramstyle]
    done = 0
    for chunk in chunks(list(ids)):
        # Driver SQL: SQLAlchemy re-renders an expanding IN list for every chunk.
        rows = conn.exec_driver_sql(
            f"DELETE FROM {currents_batches.name} "
            f"WHERE id IN ({', '.join([m] * len(chunk))}) AND claimed_by = {m} "
            "RETURNING events, first_seq",
            (*chunk, worker_id),
        ).all()
        if rows:
            done += sum(n for n, _ in rows)
            conn.exec_driver_sql(
                f"DELETE FROM {currents_batch_bodies.name} "
                f"WHERE first_seq IN ({', '.join([m] * len(rows))})",
                tuple(seq for _, seq in rows),
            )
    if done:
        count(conn, {"forwarded": done}, now=now)
    return done


def release(
    conn: sa.Connection,
    ids: Sequence[str],
    *,
    worker_id: str,
    due_at: float,
    reason: str | None,
) -> None:
    """Give batches back without spending an attempt (rate limited, feed paused)."""
    for chunk in chunks(list(ids)):
        conn.execute(
            sa.update(currents_batches)
            .where(_owned(chunk, worker_id))
            .values(claimed_by=None, claimed_until=None, due_at=due_at, last_reason=reason)
        )


def reschedule(
    conn: sa.Connection,
    retries: Mapping[str, tuple[float, str]],
    *,
    worker_id: str,
    now: float,
) -> int:
    """A failed attempt: due again at the given time, with the reason; one attempt spent.
    Returns the number of batches rescheduled (those still leased by ``worker_id``)."""
    b = currents_batches.c
    rescheduled = 0
    for batch_id, (due_at, reason) in retries.items():
        rescheduled += conn.execute(
            sa.update(currents_batches)
            .where(_owned([batch_id], worker_id))
            .values(
                claimed_by=None,
                claimed_until=None,
                due_at=due_at,
                last_reason=reason,
                attempts=b.attempts + 1,
                first_failure_at=sa.func.coalesce(b.first_failure_at, now),
            )
        ).rowcount
    return rescheduled


def dead_letter(
    conn: sa.Connection,
    reasons: Mapping[str, str],
    *,
    worker_id: str | None,
    now: float,
) -> int:
    """Move batches (and their events) to the dead-letter store with a reason."""
    moved = 0
    for batch_id, reason in reasons.items():
        where = (
            _owned([batch_id], worker_id)
            if worker_id is not None
            else currents_batches.c.id == batch_id
        )
        events = conn.execute(
            sa.update(currents_batches)
            .where(where, currents_batches.c.state == BatchState.PENDING)
            .values(state=BatchState.DEAD, last_reason=reason, claimed_by=None, claimed_until=None)
            .returning(currents_batches.c.events)
        ).scalar()
        if events is None:
            continue
        moved += events
    if moved:
        count(conn, {"dead_letter": moved}, now=now)
    return moved


def expire(conn: sa.Connection, *, now: float, retention_s: float) -> int:
    """Dead-letter what has waited past ``retention_s`` since arrival (or replay); returns the
    number of events moved. Nothing is deleted (SPEC §6.5)."""
    cutoff = now - retention_s
    b = currents_batches.c
    expired = conn.execute(
        sa.select(b.id, b.last_reason).where(
            b.state == BatchState.PENDING,
            b.retain_from < cutoff,
            sa.or_(b.claimed_until.is_(None), b.claimed_until < now),
        )
    ).all()
    moved = dead_letter(
        conn,
        {r.id: f"retention_expired: {r.last_reason or 'not delivered'}" for r in expired},
        worker_id=None,
        now=now,
    )
    e = currents_events.c
    stale = conn.execute(
        sa.update(currents_events)
        .where(e.state.in_([EventState.QUEUED, EventState.HELD]), e.received_at < cutoff)
        .values(
            state=EventState.DEAD,
            reason="retention_expired: " + sa.func.coalesce(e.reason, "queued"),
        )
        .returning(e.seq)
    ).all()
    if stale:
        count(conn, {"dead_letter": len(stale)}, now=now)
    return moved + len(stale)


def replay(conn: sa.Connection, *, feed: str | None, now: float) -> int:
    """Re-queue dead-lettered batches and events (of one feed, or all) with a fresh retention
    and attempt budget; returns the number of events re-queued."""
    b = currents_batches.c
    e = currents_events.c
    batch_where = [b.state == BatchState.DEAD]
    if feed is not None:
        batch_where.append(b.feed == feed)
    revived = conn.execute(
        sa.update(currents_batches)
        .where(*batch_where)
        .values(
            state=BatchState.PENDING,
            attempts=0,
            first_failure_at=None,
            due_at=now,
            retain_from=now,
            claimed_by=None,
            claimed_until=None,
        )
        .returning(b.events)
    ).all()
    event_where = [e.state == EventState.DEAD]
    if feed is not None:
        event_where.append(e.feed == feed)
    loose = conn.execute(
        sa.update(currents_events)
        .where(*event_where)
        .values(
            state=sa.case((e.feed.is_(None), EventState.HELD), else_=EventState.QUEUED),
            reason=sa.case((e.feed.is_(None), "no_feed"), else_=None),
            received_at=now,
        )
        .returning(e.seq)
    ).all()
    total = sum(r.events for r in revived) + len(loose)
    if total:
        count(conn, {"replayed": total}, now=now)
    return total


def release_all_claims(conn: sa.Connection) -> int:
    """Drop every lease (SQLite at start-up: the only sending process was this one)."""
    result = conn.execute(
        sa.update(currents_batches)
        .where(currents_batches.c.claimed_by.is_not(None))
        .values(claimed_by=None, claimed_until=None)
    )
    return int(result.rowcount or 0)
