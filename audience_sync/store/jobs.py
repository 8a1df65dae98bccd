"""Job leases and job runs (SPEC §7): what makes a scheduled job a singleton across processes,
and the record of every run.

A lease is one row per job. :func:`acquire` takes it in one ``INSERT ... ON CONFLICT DO UPDATE
... WHERE`` statement, atomic on both engines: the row is taken only if its lease ran out (its
holder died or finished) and, unless forced, the job's interval has passed since it last
started, so two schedulers with the same interval run a job once per interval between them.
The holder extends the lease while it works (:func:`renew`); a killed holder's lease expires
after ``jobs.lease_s`` and another scheduler takes over.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa

from audience_sync.core.states import JobRunOutcome
from audience_sync.store.schema import job_leases, job_runs
from audience_sync.store.statements import insert

INTERVAL_TOLERANCE = 0.1
"""Share of the interval a run may start early: schedulers fire a little before or after the
exact interval, and a run 9.99 s after the last one of a 10 s job is on time."""
MAX_TOLERANCE_S = 1.0


def acquire(
    conn: sa.Connection,
    *,
    job: str,
    holder: str,
    now: float,
    lease_s: float,
    interval_s: float | None = None,
) -> bool:
    """Take the job's lease for ``lease_s`` seconds; True if this holder now has it.

    ``interval_s``: also require that the last run started at least that long ago (less a
    small tolerance); None (a manual run) skips that check.
    """
    stmt = insert(conn, job_leases).values(
        job=job, holder=holder, expires_at=now + lease_s, last_started_at=now
    )
    free = sa.or_(job_leases.c.expires_at <= now, job_leases.c.holder == holder)
    condition = free
    if interval_s is not None:
        earliest = interval_s - min(MAX_TOLERANCE_S, interval_s * INTERVAL_TOLERANCE)
        condition = sa.and_(
            free,
            sa.or_(
                job_leases.c.last_started_at.is_(None),
                job_leases.c.last_started_at + earliest <= now,
            ),
        )
    stmt = stmt.on_conflict_do_update(
        index_elements=[job_leases.c.job],
        set_={
            "holder": stmt.excluded.holder,
            "expires_at": stmt.excluded.expires_at,
            "last_started_at": stmt.excluded.last_started_at,
        },
        where=condition,
    ).returning(job_leases.c.job)
    return conn.execute(stmt).first() is not None


def renew(conn: sa.Connection, *, job: str, holder: str, now: float, lease_s: float) -> bool:
    """Extend a held lease; False if it was lost (it expired and another took it)."""
    result = conn.execute(
        job_leases.update()
        .where(job_leases.c.job == job, job_leases.c.holder == holder)
        .values(expires_at=now + lease_s)
    )
    return bool(result.rowcount)


def release(conn: sa.Connection, *, job: str, holder: str, now: float) -> None:
    """Give the lease up at the end of a run (the start time stays, for the interval check)."""
    conn.execute(
        job_leases.update()
        .where(job_leases.c.job == job, job_leases.c.holder == holder)
        .values(holder=None, expires_at=now, last_finished_at=now)
    )


def start_run(conn: sa.Connection, *, job: str, holder: str, now: float) -> int:
    """Record a run as started; returns its id."""
    row = conn.execute(
        job_runs.insert()
        .values(job=job, holder=holder, started_at=now, outcome=JobRunOutcome.RUNNING, counts={})
        .returning(job_runs.c.id)
    ).one()
    return int(row.id)


def finish_run(
    conn: sa.Connection,
    *,
    run_id: int,
    now: float,
    outcome: JobRunOutcome,
    counts: Mapping[str, int | float],
    details: Mapping[str, t.Any] | None = None,
    error: str | None = None,
) -> None:
    """Record how a run ended: its outcome, counts, details (JSON) and error text."""
    conn.execute(
        job_runs.update()
        .where(job_runs.c.id == run_id)
        .values(
            finished_at=now,
            outcome=outcome,
            counts=dict(counts),
            details=dict(details) if details is not None else None,
            error=error,
        )
    )


@dataclass(frozen=True, kw_only=True)
class JobRun:
    """One recorded run (what ``status`` and the admin API show)."""

    id: int
    job: str
    holder: str
    started_at: float
    finished_at: float | None
    outcome: str
    counts: Mapping[str, t.Any] = field(default_factory=dict)
    details: Mapping[str, t.Any] | None = None
    error: str | None = None


def recent_runs(conn: sa.Connection, *, job: str | None = None, limit: int = 50) -> list[JobRun]:
    """The newest runs first, of every job or of one."""
    query = sa.select(job_runs).order_by(job_runs.c.started_at.desc(), job_runs.c.id.desc())
    if job is not None:
        query = query.where(job_runs.c.job == job)
    return [
        JobRun(
            id=r.id,
            job=r.job,
            holder=r.holder,
            started_at=r.started_at,
            finished_at=r.finished_at,
            outcome=r.outcome,
            counts=r.counts or {},
            details=r.details,
            error=r.error,
        )
        for r in conn.execute(query.limit(limit))
    ]


def prune_runs(conn: sa.Connection, *, before: float) -> int:
    """Delete finished runs that started before ``before``; returns how many."""
    result = conn.execute(
        job_runs.delete().where(
            job_runs.c.started_at < before, job_runs.c.outcome != JobRunOutcome.RUNNING
        )
    )
    return max(result.rowcount or 0, 0)


def abandon_stale_runs(conn: sa.Connection, *, job: str, now: float) -> int:
    """Close runs of ``job`` still marked running: called by a new lease holder, so they are
    runs whose holder died (their lease expired) and will never record an end."""
    result = conn.execute(
        job_runs.update()
        .where(job_runs.c.job == job, job_runs.c.outcome == JobRunOutcome.RUNNING)
        .values(
            outcome=JobRunOutcome.FAILED,
            finished_at=now,
            error="abandoned: the holder stopped before the run ended (lease expired)",
        )
    )
    return max(result.rowcount or 0, 0)
