"""The Currents queue (SPEC §6): events, batches, feed state, imported files, dedup keys and the
dead-letter store, as plain values in and out.

An event's life: a row of ``currents_events``, ``queued`` (or ``held`` while no feed takes
it), until it is cut into a batch: it then moves into that batch (body and ``event_ids``), whose
content is fixed, and the batch is deleted once mParticle accepts it. What cannot be delivered
becomes ``dead`` with a reason, an event row or a batch row (kept, counted, replayable).
Batches are claimed with a lease, oldest first, and never while an older batch of the same user
and feed is still pending, so a user's events arrive in arrival order and nothing is in flight
twice.
"""

from __future__ import annotations

import json
import typing as t
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from audience_sync.core.currents.batching import BatchPlan, QueuedEvent
from audience_sync.store.counters import increment
from audience_sync.store.dialect import insert
from audience_sync.store.schema import (
    currents_batches,
    currents_dedup,
    currents_events,
    currents_feeds,
    currents_files,
)

COUNTER_SCOPE = "currents"
ID_CHUNK = 500
"""Ids per ``IN (...)`` list (far under SQLite's and PostgreSQL's parameter limits)."""


class EventState(StrEnum):
    QUEUED = "queued"
    HELD = "held"
    DEAD = "dead"


class BatchState(StrEnum):
    PENDING = "pending"
    DEAD = "dead"


class FeedState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """A mapped event to queue; ``feed`` None means held (``no_feed``)."""

    event_id: str
    feed: str | None
    external_user_id: str
    app_id: str | None
    platform: str | None
    envelope_json: str
    event_json: str


@dataclass(frozen=True, kw_only=True)
class ClaimedBatch:
    """A batch a sender holds a lease on."""

    id: str
    feed: str
    external_user_id: str
    first_seq: int
    events: int
    body: bytes
    attempts: int
    first_failure_at: float | None


@dataclass(frozen=True, kw_only=True)
class FeedStatus:
    """What ``audience-sync status`` and the admin API show of one feed."""

    name: str
    state: str
    reason: str | None
    paused_at: float | None
    next_probe_at: float | None
    backlog: int
    pending_batches: int
    dead_events: int
    oldest_received_at: float | None


def _chunks(items: Sequence[t.Any], size: int = ID_CHUNK) -> Iterable[Sequence[t.Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- intake ------------------------------------------------------------------------------------


def claim_new_ids(
    conn: sa.Connection, event_ids: Sequence[str], *, now: float, window_s: float
) -> set[str]:
    """Record ``event_ids`` as seen; return those not seen within ``window_s`` (new work).

    Concurrent intakes of the same id: the primary key lets exactly one insert win.
    """
    unique = list(dict.fromkeys(event_ids))
    fresh: set[str] = set()
    cutoff = now - window_s
    for chunk in _chunks(unique):
        expired = conn.execute(
            sa.update(currents_dedup)
            .where(currents_dedup.c.event_id.in_(chunk), currents_dedup.c.seen_at < cutoff)
            .values(seen_at=now)
            .returning(currents_dedup.c.event_id)
        ).scalars()
        fresh.update(expired)
        inserted = conn.execute(
            insert(conn, currents_dedup)
            .on_conflict_do_nothing(index_elements=[currents_dedup.c.event_id])
            .returning(currents_dedup.c.event_id),
            [{"event_id": i, "seen_at": now} for i in chunk],
        ).scalars()
        fresh.update(inserted)
    return fresh


def enqueue(conn: sa.Connection, events: Sequence[NewEvent], *, now: float) -> int:
    """Queue mapped events in arrival order (the order given), in the caller's transaction."""
    if not events:
        return 0
    conn.execute(
        currents_events.insert(),
        [
            {
                "event_id": e.event_id,
                "feed": e.feed,
                "external_user_id": e.external_user_id,
                "app_id": e.app_id,
                "platform": e.platform,
                "state": EventState.QUEUED if e.feed else EventState.HELD,
                "received_at": now,
                "envelope": e.envelope_json,
                "event": e.event_json,
                "reason": None if e.feed else "no_feed",
            }
            for e in events
        ],
    )
    return len(events)


def count(conn: sa.Connection, counts: Mapping[str, int], *, now: float) -> None:
    """Add per-reason Currents counts (``received``, ``forwarded``, ``duplicate``…)."""
    increment(conn, {(COUNTER_SCOPE, reason): n for reason, n in counts.items()}, now=now)


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


# -- imported files ----------------------------------------------------------------------------


def is_imported(conn: sa.Connection, path: str, checksum: str) -> bool:
    """Whether this file (path and content) was imported before."""
    return (
        conn.execute(
            sa.select(currents_files.c.id).where(
                currents_files.c.path == path, currents_files.c.checksum == checksum
            )
        ).first()
        is not None
    )


def record_file(
    conn: sa.Connection,
    *,
    path: str,
    checksum: str,
    size: int,
    events: int,
    forwarded: int,
    skipped: Mapping[str, int],
    now: float,
) -> bool:
    """Record an imported file in the import's transaction; False if another importer did."""
    inserted = conn.execute(
        insert(conn, currents_files)
        .on_conflict_do_nothing(index_elements=[currents_files.c.path, currents_files.c.checksum])
        .returning(currents_files.c.id),
        {
            "path": path,
            "checksum": checksum,
            "size": size,
            "events": events,
            "forwarded": forwarded,
            "skipped": dict(skipped),
            "imported_at": now,
        },
    ).first()
    return inserted is not None


# -- forming batches ---------------------------------------------------------------------------


def queued_events(conn: sa.Connection, feed: str, *, limit: int) -> list[QueuedEvent]:
    """The oldest queued events of a feed (locked against other planners on PostgreSQL)."""
    c = currents_events.c
    query = (
        sa.select(c.seq, c.event_id, c.feed, c.external_user_id, c.received_at, c.envelope, c.event)
        .where(c.state == EventState.QUEUED, c.feed == feed)
        .order_by(c.seq)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [
        QueuedEvent(
            seq=r.seq,
            event_id=r.event_id,
            feed=r.feed,
            external_user_id=r.external_user_id,
            received_at=r.received_at,
            envelope_json=r.envelope,
            event_json=r.event,
        )
        for r in conn.execute(query)
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


def save_plan(conn: sa.Connection, plan: BatchPlan, *, now: float) -> int:
    """Store formed batches (their events move into them); dead-letter events that cannot be
    sent. Returns the number of batches."""
    c = currents_events.c
    if plan.batches:
        conn.execute(
            currents_batches.insert(),
            [
                {
                    "id": b.batch_id,
                    "feed": b.feed,
                    "external_user_id": b.external_user_id,
                    "first_seq": b.first_seq,
                    "events": len(b.seqs),
                    "event_ids": json.dumps(list(b.event_ids)),
                    "body": b.body,
                    "state": BatchState.PENDING,
                    "attempts": 0,
                    "due_at": now,
                    "received_at": b.received_at,
                    "retain_from": b.received_at,
                    "created_at": now,
                }
                for b in plan.batches
            ],
        )
        seqs = [s for b in plan.batches for s in b.seqs]
        for chunk in _chunks(seqs):
            conn.execute(sa.delete(currents_events).where(c.seq.in_(chunk)))
    if plan.rejected:
        conn.execute(
            sa.update(currents_events)
            .where(c.seq == sa.bindparam("b_seq"))
            .values(state=EventState.DEAD, reason=sa.bindparam("b_reason")),
            [{"b_seq": s, "b_reason": r} for s, r in plan.rejected],
        )
        count(conn, {"dead_letter": len(plan.rejected)}, now=now)
    return len(plan.batches)


# -- sending -----------------------------------------------------------------------------------


def _claimable(now: float) -> t.Any:
    b = currents_batches.c
    earlier = currents_batches.alias("earlier")
    return sa.and_(
        b.state == BatchState.PENDING,
        b.due_at <= now,
        sa.or_(b.claimed_until.is_(None), b.claimed_until < now),
        ~sa.exists().where(
            earlier.c.feed == b.feed,
            earlier.c.external_user_id == b.external_user_id,
            earlier.c.state == BatchState.PENDING,
            earlier.c.first_seq < b.first_seq,
        ),
    )


def _claim(
    conn: sa.Connection, where: t.Any, *, worker_id: str, now: float, lease_s: float, limit: int
) -> list[ClaimedBatch]:
    b = currents_batches.c
    query = (
        sa.select(
            b.id,
            b.feed,
            b.external_user_id,
            b.first_seq,
            b.events,
            b.body,
            b.attempts,
            b.first_failure_at,
        )
        .where(where)
        .order_by(b.first_seq)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=currents_batches)
    rows = conn.execute(query).all()
    if rows:
        for chunk in _chunks([r.id for r in rows]):
            conn.execute(
                sa.update(currents_batches)
                .where(b.id.in_(chunk))
                .values(claimed_by=worker_id, claimed_until=now + lease_s)
            )
    return [
        ClaimedBatch(
            id=r.id,
            feed=r.feed,
            external_user_id=r.external_user_id,
            first_seq=r.first_seq,
            events=r.events,
            body=bytes(r.body),
            attempts=r.attempts,
            first_failure_at=r.first_failure_at,
        )
        for r in rows
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
    """Lease the oldest due batches of ``feeds`` (the active ones), one per user at a time."""
    if not feeds:
        return []
    where = sa.and_(_claimable(now), currents_batches.c.feed.in_(list(feeds)))
    return _claim(conn, where, worker_id=worker_id, now=now, lease_s=lease_s, limit=limit)


def claim_probe(
    conn: sa.Connection, feed: str, *, worker_id: str, now: float, lease_s: float
) -> ClaimedBatch | None:
    """Lease the oldest pending batch of a paused feed, whatever its due time (the probe)."""
    b = currents_batches.c
    where = sa.and_(
        b.feed == feed,
        b.state == BatchState.PENDING,
        sa.or_(b.claimed_until.is_(None), b.claimed_until < now),
    )
    claimed = _claim(conn, where, worker_id=worker_id, now=now, lease_s=lease_s, limit=1)
    return claimed[0] if claimed else None


def _owned(ids: Sequence[str], worker_id: str) -> t.Any:
    b = currents_batches.c
    return sa.and_(b.id.in_(list(ids)), b.claimed_by == worker_id)


def finish(conn: sa.Connection, ids: Sequence[str], *, worker_id: str, now: float) -> int:
    """mParticle accepted these batches: delete them and their events; returns events done."""
    done = 0
    for chunk in _chunks(list(ids)):
        owned = list(
            conn.execute(
                sa.select(currents_batches.c.id, currents_batches.c.events).where(
                    _owned(chunk, worker_id)
                )
            )
        )
        if not owned:
            continue
        done += sum(r.events for r in owned)
        conn.execute(
            sa.delete(currents_batches).where(currents_batches.c.id.in_([r.id for r in owned]))
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
    for chunk in _chunks(list(ids)):
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
) -> None:
    """A failed attempt: due again at the given time, with the reason; one attempt spent."""
    b = currents_batches.c
    for batch_id, (due_at, reason) in retries.items():
        conn.execute(
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
        )


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


# -- feeds -------------------------------------------------------------------------------------


def sync_feeds(
    conn: sa.Connection, fingerprints: Mapping[str, str], *, now: float
) -> dict[str, str]:
    """Make a row for every configured feed; a paused feed whose settings changed is probed at
    once (SPEC §6.5). Returns each feed's state."""
    f = currents_feeds.c
    existing = {r.name: r for r in conn.execute(sa.select(currents_feeds))}
    states: dict[str, str] = {}
    for name, fp in fingerprints.items():
        row = existing.get(name)
        if row is None:
            conn.execute(
                insert(conn, currents_feeds)
                .on_conflict_do_nothing(index_elements=[f.name])
                .values(name=name, state=FeedState.ACTIVE, settings_fingerprint=fp, updated_at=now)
            )
            states[name] = FeedState.ACTIVE
            continue
        if row.settings_fingerprint != fp:
            conn.execute(
                sa.update(currents_feeds)
                .where(f.name == name)
                .values(settings_fingerprint=fp, next_probe_at=now, updated_at=now)
            )
        states[name] = row.state
    return states


def pause_feed(
    conn: sa.Connection, name: str, *, reason: str, now: float, probe_interval_s: float
) -> None:
    """Credentials refused: pause the feed; its events stay queued and it is probed later."""
    f = currents_feeds.c
    conn.execute(
        sa.update(currents_feeds)
        .where(f.name == name)
        .values(
            state=FeedState.PAUSED,
            reason=reason,
            paused_at=sa.func.coalesce(f.paused_at, now),
            next_probe_at=now + probe_interval_s,
            updated_at=now,
        )
    )


def resume_feed(conn: sa.Connection, name: str, *, now: float) -> None:
    """A probe succeeded: the feed sends again."""
    conn.execute(
        sa.update(currents_feeds)
        .where(currents_feeds.c.name == name)
        .values(
            state=FeedState.ACTIVE, reason=None, paused_at=None, next_probe_at=None, updated_at=now
        )
    )


def claim_probe_turn(conn: sa.Connection, *, now: float, probe_interval_s: float) -> list[str]:
    """Paused feeds whose probe is due; each is pushed ``probe_interval_s`` ahead so that only
    one sender probes it."""
    f = currents_feeds.c
    due = list(
        conn.execute(
            sa.select(f.name).where(
                f.state == FeedState.PAUSED,
                sa.or_(f.next_probe_at.is_(None), f.next_probe_at <= now),
            )
        ).scalars()
    )
    for name in due:
        conn.execute(
            sa.update(currents_feeds)
            .where(f.name == name)
            .values(next_probe_at=now + probe_interval_s)
        )
    return due


def feed_states(conn: sa.Connection) -> dict[str, str]:
    """Every known feed's state."""
    query = sa.select(currents_feeds.c.name, currents_feeds.c.state)
    return {r.name: r.state for r in conn.execute(query)}


# -- retention, replay, held events, pruning ---------------------------------------------------


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


# -- reads -------------------------------------------------------------------------------------


def feed_status(conn: sa.Connection, feed_names: Sequence[str]) -> list[FeedStatus]:
    """Per feed (configured ones plus any with events): state, backlog, dead, oldest arrival.
    Events held for want of a feed are reported under the name ``(no feed)``."""
    e = currents_events.c
    stats: dict[str | None, dict[str, t.Any]] = {}
    rows = conn.execute(
        sa.select(
            e.feed,
            sa.func.sum(sa.case((e.state != EventState.DEAD, 1), else_=0)),
            sa.func.sum(sa.case((e.state == EventState.DEAD, 1), else_=0)),
            sa.func.min(sa.case((e.state != EventState.DEAD, e.received_at), else_=None)),
        ).group_by(e.feed)
    )
    for feed, live, dead, oldest in rows:
        stats[feed] = {"backlog": int(live or 0), "dead": int(dead or 0), "oldest": oldest}
    b = currents_batches.c
    pending: dict[str, int] = {}
    batch_rows = conn.execute(
        sa.select(
            b.feed,
            b.state,
            sa.func.count(),
            sa.func.sum(b.events),
            sa.func.min(b.received_at),
        ).group_by(b.feed, b.state)
    )
    for feed, state, batches, events, oldest in batch_rows:
        s = stats.setdefault(feed, {"backlog": 0, "dead": 0, "oldest": None})
        if state == BatchState.PENDING:
            pending[feed] = int(batches)
            s["backlog"] += int(events or 0)
            if oldest is not None and (s["oldest"] is None or oldest < s["oldest"]):
                s["oldest"] = oldest
        else:
            s["dead"] += int(events or 0)
    feeds = {r.name: r for r in conn.execute(sa.select(currents_feeds))}
    names = list(dict.fromkeys([*feed_names, *feeds, *(k for k in stats if k is not None)]))
    out = []
    for name in names:
        row = feeds.get(name)
        s = stats.get(name, {})
        out.append(
            FeedStatus(
                name=name,
                state=row.state if row else FeedState.ACTIVE,
                reason=row.reason if row else None,
                paused_at=row.paused_at if row else None,
                next_probe_at=row.next_probe_at if row else None,
                backlog=s.get("backlog", 0),
                pending_batches=int(pending.get(name, 0)),
                dead_events=s.get("dead", 0),
                oldest_received_at=s.get("oldest"),
            )
        )
    if None in stats:
        s = stats[None]
        out.append(
            FeedStatus(
                name="(no feed)",
                state="held",
                reason="no_feed",
                paused_at=None,
                next_probe_at=None,
                backlog=s["backlog"],
                pending_batches=0,
                dead_events=s["dead"],
                oldest_received_at=s["oldest"],
            )
        )
    return out


def dead_letters(
    conn: sa.Connection, *, feed: str | None = None, limit: int | None = 100
) -> list[dict[str, t.Any]]:
    """Dead-lettered events with their reasons (ids only, no payloads), oldest first."""
    e = currents_events.c
    b = currents_batches.c
    events = sa.select(e.event_id, e.feed, e.external_user_id, e.reason, e.received_at).where(
        e.state == EventState.DEAD
    )
    batches = sa.select(
        b.event_ids, b.feed, b.external_user_id, b.last_reason, b.received_at
    ).where(b.state == BatchState.DEAD)
    if feed is not None:
        events = events.where(e.feed == feed)
        batches = batches.where(b.feed == feed)
    out = [dict(r._mapping) for r in conn.execute(events)]
    for row in conn.execute(batches):
        out.extend(
            {
                "event_id": event_id,
                "feed": row.feed,
                "external_user_id": row.external_user_id,
                "reason": row.last_reason,
                "received_at": row.received_at,
            }
            for event_id in json.loads(row.event_ids)
        )
    out.sort(key=lambda d: d["received_at"])
    return out if limit is None else out[:limit]


def release_all_claims(conn: sa.Connection) -> int:
    """Drop every lease (SQLite at start-up: the only sending process was this one)."""
    result = conn.execute(
        sa.update(currents_batches)
        .where(currents_batches.c.claimed_by.is_not(None))
        .values(claimed_by=None, claimed_until=None)
    )
    return int(result.rowcount or 0)
