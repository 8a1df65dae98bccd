"""``cleanup_removed`` (SPEC §7, §4.6): page the pending cleanups the Firehose intake recorded,
marking their users dirty through the normal outbox so the sender writes each one's minimal
diff. Removed audiences with ``cleanupOnRemove`` lose their attributes (string, array,
``In <name>``), renames and mode changes reach every member, a moved connection's users are
resent in full to the new workspace and its rows in the old one settled."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import sqlalchemy as sa

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.core.states import CleanupKind
from audience_sync.jobs.old_workspace import clear_old_workspace
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.store import cleanups
from audience_sync.store.schema import pending_cleanups
from audience_sync.store.transactions import in_transaction

PAGE = 5000
"""Users marked dirty per transaction: short transactions, never one per audience."""


Clear = Callable[[cleanups.Cleanup], tuple[int, bool]]
"""Clears a moved connection's users from its old workspace: (users cleared, finished)."""


def mark_pending(
    engine: sa.Engine,
    *,
    now: float,
    budget: int,
    keep_alive: Callable[[], bool] = lambda: True,
    clear: Clear | None = None,
) -> dict[str, int]:
    """Work through open cleanups, oldest first, until ``budget`` users were marked dirty or
    none is left; each page is its own short transaction. A moved connection's old workspace
    is settled first, and cleared (``clear``) before its users are resent to the new one; a
    clearing that cannot finish now (Braze unavailable) leaves that record for the next run
    and goes on with the others."""
    counts = {"users_enqueued": 0, "cleanups_done": 0, "old_rows_settled": 0, "old_cleared": 0}
    for item in in_transaction(engine, lambda c: cleanups.open_cleanups(c, limit=100)):
        if budget <= 0 or not keep_alive():
            break
        if item.kind is CleanupKind.CONNECTION_MOVED and item.cursor is None:
            counts["old_rows_settled"] += in_transaction(
                engine,
                lambda c, item=item: cleanups.settle_old_workspace(c, item, now=now),
                action="cleanup_settle",
            )
        finished = True
        if item.clear_old and clear is not None:
            # The old and the new workspace are independent: a Braze that is away for the
            # clearing does not hold back the resend to the new one.
            cleared, finished = clear(item)
            counts["old_cleared"] += cleared
            if finished:
                in_transaction(
                    engine, lambda c, item=item: cleanups.finish_clearing(c, item, now=now)
                )
        paged = item.paged
        while not paged and budget > 0 and keep_alive():
            limit = min(PAGE, budget)
            enqueued, paged = in_transaction(
                engine,
                lambda c, item=item, limit=limit: cleanups.enqueue_page(
                    c, item, now=now, limit=limit
                ),
                action="cleanup_page",
            )
            budget -= max(enqueued, 1)
            counts["users_enqueued"] += enqueued
            # The cursor moved: read the record again for the next page.
            item = replace(item, cursor=_cursor(engine, item.id))
        counts["cleanups_done"] += int(paged and finished)
    return counts


def _cursor(engine: sa.Engine, cleanup_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(pending_cleanups.c.cursor).where(pending_cleanups.c.id == cleanup_id)
        ).scalar()


def run(ctx: JobContext) -> JobResult:
    """One scheduled pass, bounded by ``jobs.cleanup_removed.users_per_run``."""
    settings = ctx.runtime.settings
    client = BrazeClient(
        timeout_s=settings.get("braze.timeout_s"),
        dry_run=settings.get("braze.dry_run"),
        dry_run_path=settings.get("braze.dry_run_path"),
    )
    rate = RateBudget(settings.get("braze.requests_per_second"))
    try:
        counts = mark_pending(
            ctx.runtime.engine,
            now=ctx.clock(),
            budget=settings.get("jobs.cleanup_removed.users_per_run"),
            keep_alive=ctx.keep_alive,
            clear=lambda item: clear_old_workspace(
                ctx.runtime.engine,
                settings,
                item,
                client=client,
                budget=rate,
                now=ctx.clock,
                keep_alive=ctx.keep_alive,
            ),
        )
    finally:
        client.close()
    return JobResult(counts=counts)


SPEC = JobSpec(
    name="cleanup_removed",
    run=run,
    default_interval_s=60.0,
    description="clear removed audiences' attributes, apply renames and mode changes, page by page",
)
