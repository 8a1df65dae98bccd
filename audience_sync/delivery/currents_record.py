"""What the mParticle sender writes after a request, one function per transaction: accepted
batches, a paused feed, a failed attempt. Each takes the connection of the sender's transaction
(:meth:`audience_sync.delivery.loop.SenderLoop.transaction`) and touches only batches still
leased by that sender, so a late record never undoes another sender's work.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.core.currents.failures import BatchFailures
from audience_sync.store import currents as queue


def record_accepted(
    conn: sa.Connection,
    feed: str,
    ids: Sequence[str],
    *,
    worker_id: str,
    now: float,
    resume: bool,
) -> None:
    """Delete accepted batches with their events; a success resumes a paused feed."""
    queue.finish(conn, ids, worker_id=worker_id, now=now)
    if resume:
        queue.resume_feed(conn, feed, now=now)


def record_paused(
    conn: sa.Connection,
    feed: str,
    ids: Sequence[str],
    *,
    reason: str,
    worker_id: str,
    now: float,
    probe_interval_s: float,
) -> None:
    """mParticle refused the feed's credentials: pause it and give its batches back without
    spending an attempt (a probe resumes it)."""
    queue.pause_feed(conn, feed, reason=reason, now=now, probe_interval_s=probe_interval_s)
    queue.release(conn, ids, worker_id=worker_id, due_at=now, reason=reason)
    queue.count(conn, {f"feed_paused_{reason}": 1}, now=now)


def record_failures(
    conn: sa.Connection,
    failures: BatchFailures,
    *,
    reason: str,
    worker_id: str,
    now: float,
) -> int:
    """One failed attempt: reschedule or dead-letter each batch, counting the retries as
    ``retry_<reason>``; returns the number rescheduled."""
    rescheduled = queue.reschedule(conn, failures.retries, worker_id=worker_id, now=now)
    queue.dead_letter(conn, failures.dead, worker_id=worker_id, now=now)
    queue.count(conn, {f"retry_{reason}": rescheduled}, now=now)
    return rescheduled
