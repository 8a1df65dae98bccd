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

from audience_sync.store.currents.base import (
    COUNTER_SCOPE,
    BatchState,
    EventState,
    FeedState,
    chunks,
    count,
)
from audience_sync.store.currents.batches import (
    ClaimedBatch,
    claim_batches,
    claim_probe,
    dead_letter,
    expire,
    finish,
    release,
    release_all_claims,
    replay,
    reschedule,
)
from audience_sync.store.currents.events import (
    NewEvent,
    backlog,
    claim_new_ids,
    enqueue,
    feeds_with_queued,
    is_planning_due,
    lock_feed_for_planning,
    prune_dedup,
    queued_events,
    reroute_held,
    save_plan,
)
from audience_sync.store.currents.feeds import (
    claim_probe_turn,
    feed_states,
    pause_feed,
    resume_feed,
    sync_feeds,
)
from audience_sync.store.currents.files import (
    is_imported,
    record_file,
)
from audience_sync.store.currents.formed import (
    PlanConflictError,
    open_batches,
    reserve_seqs,
    store_batches,
)
from audience_sync.store.currents.reads import (
    FeedStatus,
    dead_letters,
    feed_status,
)

__all__ = [
    "COUNTER_SCOPE",
    "BatchState",
    "ClaimedBatch",
    "EventState",
    "FeedState",
    "FeedStatus",
    "NewEvent",
    "PlanConflictError",
    "backlog",
    "chunks",
    "claim_batches",
    "claim_new_ids",
    "claim_probe",
    "claim_probe_turn",
    "count",
    "dead_letter",
    "dead_letters",
    "enqueue",
    "expire",
    "feed_states",
    "feed_status",
    "feeds_with_queued",
    "finish",
    "is_imported",
    "is_planning_due",
    "lock_feed_for_planning",
    "open_batches",
    "pause_feed",
    "prune_dedup",
    "queued_events",
    "record_file",
    "release",
    "release_all_claims",
    "replay",
    "reroute_held",
    "reschedule",
    "reserve_seqs",
    "resume_feed",
    "save_plan",
    "store_batches",
    "sync_feeds",
]
