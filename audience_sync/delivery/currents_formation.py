"""Batch formation for the mParticle sender: which feeds are due, and cutting one feed's queued
events into batches (:func:`audience_sync.core.currents.batching.plan_batches`) saved in one
transaction, the first of them leased at once to the sender that formed them (SPEC §6.3).

Formation is per feed, so the sender can keep a feed whose planning fails apart from the others.
Most batches are formed by the intake itself (:func:`audience_sync.currents.service.form_batches`);
the events queued here are those it could not batch: held events a feed now takes, and replayed
dead-lettered events.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Collection

import sqlalchemy as sa

from audience_sync.core.currents.batching import BatchPlan, PlannedBatch, plan_batches
from audience_sync.store import currents as queue
from audience_sync.store.engine import is_postgresql, read_only

PLAN_EVENTS = 20_000
"""Queued events cut into batches per feed and transaction. A feed is planned once its oldest
queued event has waited ``delivery.coalesce_s`` or this many are queued, so that a user's events
arriving close together share a batch (fewer batches against the 270 batches/s budget)."""
FORMATION_SEND_S = 5.0
"""Batches are leased as they are formed (no separate claim, which cost more than the rest of
a batch's bookkeeping) up to what the feed's budget sends in this many seconds, well within the
lease, and at least a full claim; the others are claimed later, oldest first."""

T = t.TypeVar("T")


class Transaction(t.Protocol):
    """The sender's one transaction runner (:meth:`SenderLoop.transaction`)."""

    def __call__(self, work: Callable[[sa.Connection], T], *, action: str) -> T: ...


def formation_claims(*, batches_per_second: float, lease_s: float, claim_batches: int) -> int:
    """How many batches a feed's formation leases at once (see :data:`FORMATION_SEND_S`)."""
    send_s = min(FORMATION_SEND_S, lease_s / 2)
    return int(min(PLAN_EVENTS, max(claim_batches, batches_per_second * send_s)))


def due_feeds(
    engine: sa.Engine, configured: Collection[str], *, now: float, coalesce_s: float
) -> list[str]:
    """Configured feeds whose queued events are due for planning. Events of a feed no longer
    configured stay queued (shown by status) until it is."""
    with read_only(engine) as conn:
        return [
            feed
            for feed in queue.feeds_with_queued(conn)
            if feed in configured
            and queue.is_planning_due(conn, feed, older_than=now - coalesce_s, enough=PLAN_EVENTS)
        ]


def form_feed(
    engine: sa.Engine,
    transaction: Transaction,
    feed: str,
    *,
    environment: str,
    now: float,
    claim: tuple[str, float] | None,
    claim_limit: int,
) -> tuple[BatchPlan, list[queue.ClaimedBatch]]:
    """Plan and save one feed's queued events; returns the plan and the batches leased to
    ``claim`` (worker id, lease end), none when ``claim`` is None (a paused feed).

    Raises:
        queue.PlanConflictError: the events changed under the plan (plan again next round).
    """

    def save(conn: sa.Connection, plan: BatchPlan) -> list[PlannedBatch]:
        return queue.save_plan(conn, plan, now=now, claim=claim, claim_limit=claim_limit)

    if is_postgresql(engine):
        # Planners of a feed take turns (advisory lock): read and plan inside the write.
        def locked(conn: sa.Connection) -> tuple[BatchPlan, list[PlannedBatch]]:
            queue.lock_feed_for_planning(conn, feed)
            events = queue.queued_events(conn, feed, limit=PLAN_EVENTS)
            plan = plan_batches(events, environment=environment)
            return plan, save(conn, plan)

        plan, claimed = transaction(locked, action="currents_plan")
    else:
        # SQLite: read and plan without the writer lock (the importer keeps writing meanwhile);
        # the write then checks that every planned event is still queued.
        with read_only(engine) as conn:
            events = queue.queued_events(conn, feed, limit=PLAN_EVENTS)
        plan = plan_batches(events, environment=environment)
        claimed = transaction(lambda conn: save(conn, plan), action="currents_plan")
    return plan, [_fresh_claim(b) for b in claimed]


def _fresh_claim(batch: PlannedBatch) -> queue.ClaimedBatch:
    """A batch leased at its formation, as the send path sees claims."""
    return queue.ClaimedBatch(
        id=batch.batch_id,
        feed=batch.feed,
        external_user_id=batch.external_user_id,
        first_seq=batch.first_seq,
        events=len(batch.seqs),
        body=batch.body,
        attempts=0,
        first_failure_at=None,
    )
