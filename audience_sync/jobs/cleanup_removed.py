"""``cleanup_removed`` (SPEC §7, §4.6): page the pending cleanups the Firehose intake recorded,
marking their users dirty through the normal outbox so the sender writes each one's minimal
diff. Removed audiences with ``cleanupOnRemove`` lose their attributes (string, array,
``In <name>``), renames and mode changes reach every member, a moved connection's users are
resent in full to the new workspace and its rows in the old one settled."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.store import cleanups
from audience_sync.store.transactions import in_transaction

PAGE = 5000
"""Users marked dirty per transaction: short transactions, never one per audience."""


def mark_pending(
    engine: sa.Engine,
    *,
    now: float,
    budget: int,
    keep_alive: Callable[[], bool] = lambda: True,
) -> dict[str, int]:
    """Work through open cleanups, oldest first, until ``budget`` users were marked dirty or
    none is left; each page is its own short transaction."""
    counts = {"users_enqueued": 0, "cleanups_done": 0, "old_rows_settled": 0}
    while budget > 0 and keep_alive():
        open_ = in_transaction(engine, lambda c: cleanups.open_cleanups(c, limit=1))
        if not open_:
            break
        item = open_[0]
        limit = min(PAGE, budget)

        def page(
            conn: sa.Connection, item: cleanups.Cleanup = item, limit: int = limit
        ) -> tuple[int, bool, int]:
            settled = 0
            if item.kind is cleanups.CleanupKind.CONNECTION_MOVED and item.cursor is None:
                settled = cleanups.settle_old_workspace(conn, item, now=now)
            enqueued, done = cleanups.enqueue_page(conn, item, now=now, limit=limit)
            return enqueued, done, settled

        enqueued, done, settled = in_transaction(engine, page, action="cleanup_page")
        budget -= max(enqueued, 1)
        counts["users_enqueued"] += enqueued
        counts["old_rows_settled"] += settled
        counts["cleanups_done"] += int(done)
    return counts


def run(ctx: JobContext) -> JobResult:
    """One scheduled pass, bounded by ``jobs.cleanup_removed.users_per_run``."""
    counts = mark_pending(
        ctx.runtime.engine,
        now=ctx.clock(),
        budget=ctx.runtime.settings.get("jobs.cleanup_removed.users_per_run"),
        keep_alive=ctx.keep_alive,
    )
    return JobResult(counts=counts)


SPEC = JobSpec(
    name="cleanup_removed",
    run=run,
    default_interval_s=60.0,
    description="clear removed audiences' attributes, apply renames and mode changes, page by page",
)
