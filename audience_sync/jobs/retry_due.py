"""``retry_due`` (SPEC §7): make sure what is due for a retry gets picked up on time.

Users: the sender claims due outbox rows itself, oldest due first; this job frees due rows a
dead sender still holds and reports how many retries are due and how late the oldest one is,
reading only the due range of the ``(state, due_at)`` index.

Other queues (the Currents batches, once they exist) add a source with
:func:`register_source`: a function ``(conn, now) -> counts`` run in its own transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import sqlalchemy as sa

from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.store.engine import read_only
from audience_sync.store.retries import due_retries, release_leases, stale_leases
from audience_sync.store.transactions import in_transaction

PAGE = 10_000
"""Oldest due rows looked at per run; under a healthy backlog the due range is far smaller."""

Source = Callable[[sa.Connection, float], Mapping[str, int | float]]
_SOURCES: dict[str, Source] = {}
_LOCK = threading.Lock()


def register_source(name: str, source: Source) -> None:
    """Add a retry source (hook for ``currents``: re-mark Currents batches whose retry time
    has come). Its counts appear in the run prefixed with ``name``."""
    with _LOCK:
        _SOURCES[name] = source


def run(ctx: JobContext) -> JobResult:
    """One pass over the due range of the outbox, then every registered source."""
    now = ctx.clock()
    engine = ctx.runtime.engine
    with read_only(engine) as conn:
        retries, late_s = due_retries(conn, now=now, limit=PAGE)
        stale = stale_leases(conn, now=now, limit=PAGE)
    released = (
        in_transaction(engine, lambda conn: release_leases(conn, stale), action="retry_due")
        if stale
        else 0
    )
    counts: dict[str, int | float] = {
        "due_retries": retries,
        "leases_released": released,
        "late_s": round(late_s, 3),
    }
    with _LOCK:
        sources = dict(_SOURCES)
    for name, source in sorted(sources.items()):
        result = in_transaction(engine, lambda conn, s=source: s(conn, now), action=name)
        counts.update({f"{name}_{k}": v for k, v in result.items()})
    return JobResult(counts=counts)


SPEC = JobSpec(
    name="retry_due",
    run=run,
    default_interval_s=10.0,
    description="free due retries held by dead senders; report due and late retries",
)
