"""Run one job under its database lease and record the run (SPEC §7).

The steps, each its own short transaction: take the lease (skipped when another holder has it
or the interval has not passed), close runs a dead holder left open, record the start, run the
job while a heartbeat thread keeps the lease alive, record the end (outcome, counts, error),
give the lease up. A job that raises is a ``failed`` run with the error text; the scheduler
carries on with the next interval.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.states import JobRunOutcome
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.runtime import Runtime
from audience_sync.store import jobs as store
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)


MAX_ERROR_CHARS = 1000


def describe_error(exc: BaseException) -> str:
    """The error text a run record keeps: for a database error the driver's message only,
    without the statement and its parameters (which may hold attribute values)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


def new_holder_id() -> str:
    """Unique per scheduler instance, readable in ``job_leases.holder`` and ``job_runs``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """A finished run as recorded."""

    run_id: int
    job: str
    outcome: JobRunOutcome
    result: JobResult
    error: str | None = None


class _Heartbeat:
    """Renews the lease every third of it while the job runs; notes when it is lost."""

    def __init__(
        self, runtime: Runtime, job: str, holder: str, lease_s: float, clock: Callable[[], float]
    ) -> None:
        self.runtime, self.job, self.holder, self.lease_s, self.clock = (
            runtime,
            job,
            holder,
            lease_s,
            clock,
        )
        self.done = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"lease-{job}", daemon=True)

    def _renew(self) -> bool:
        held = in_transaction(
            self.runtime.engine,
            lambda conn: store.renew(
                conn, job=self.job, holder=self.holder, now=self.clock(), lease_s=self.lease_s
            ),
            action="job_lease_renew",
        )
        if not held:
            self.lost.set()
        return held

    def _loop(self) -> None:
        while not self.done.wait(self.lease_s / 3):
            try:
                if not self._renew():
                    logger.warning(
                        "job lease lost",
                        extra={"action": "job_lease_lost", "job": self.job},
                    )
                    return
            except Exception:
                logger.exception(
                    "job lease renewal failed", extra={"action": "job_lease_error", "job": self.job}
                )


def run_job(
    runtime: Runtime,
    spec: JobSpec,
    *,
    holder: str,
    force: bool = False,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> RunReport | None:
    """Run ``spec`` once if its lease can be taken; None when it was not (held elsewhere, or
    not due yet unless ``force``)."""
    values = runtime.settings.values
    lease_s = float(values.get("jobs.lease_s", 60.0))
    interval = None if force else spec.interval_s(values)
    engine = runtime.engine
    now = clock()
    taken = in_transaction(
        engine,
        lambda conn: store.acquire(
            conn, job=spec.name, holder=holder, now=now, lease_s=lease_s, interval_s=interval
        ),
        action="job_lease_acquire",
    )
    if not taken:
        logger.debug("job not run here", extra={"action": "job_skipped", "job": spec.name})
        return None

    def begin(conn: sa.Connection) -> int:
        store.abandon_stale_runs(conn, job=spec.name, now=now)
        return store.start_run(conn, job=spec.name, holder=holder, now=now)

    run_id = in_transaction(engine, begin, action="job_start")
    heartbeat = _Heartbeat(runtime, spec.name, holder, lease_s, clock)
    stop = stop or threading.Event()

    def keep_alive() -> bool:
        return not heartbeat.lost.is_set() and not stop.is_set()

    context = JobContext(runtime=runtime, clock=clock, stop=stop, keep_alive=keep_alive)
    logger.info("job started", extra={"action": "job_started", "job": spec.name, "run": run_id})
    heartbeat.thread.start()
    outcome, result, error = JobRunOutcome.OK, JobResult(), None
    started = time.perf_counter()
    try:
        result = spec.run(context)
    except Exception as exc:
        outcome, error = JobRunOutcome.FAILED, describe_error(exc)
        logger.exception("job failed", extra={"action": "job_failed", "job": spec.name})
    finally:
        heartbeat.done.set()
        heartbeat.thread.join()

    def end(conn: sa.Connection) -> None:
        finished = clock()
        store.finish_run(
            conn,
            run_id=run_id,
            now=finished,
            outcome=outcome,
            counts=result.counts,
            details=result.details,
            error=error,
        )
        store.release(conn, job=spec.name, holder=holder, now=finished)

    in_transaction(engine, end, action="job_finish")
    logger.info(
        "job finished",
        extra={
            "action": "job_finished",
            "job": spec.name,
            "run": run_id,
            "outcome": str(outcome),
            "ms": round((time.perf_counter() - started) * 1000, 1),
            **{f"count_{k}": v for k, v in result.counts.items()},
        },
    )
    return RunReport(run_id=run_id, job=spec.name, outcome=outcome, result=result, error=error)
