"""The APScheduler 3.x ``BackgroundScheduler`` of ``audience-sync run`` and ``scheduler``.

Every enabled job gets an interval trigger of ``jobs.<name>.interval_s``. A tick only *tries*
the job: :func:`~audience_sync.jobs.runner.run_job` runs it when this process gets the
database lease and the interval has passed since the job last started anywhere, so any number
of schedulers share the work and each job runs once per interval.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from audience_sync.jobs.registry import JobSpec, builtin_jobs
from audience_sync.jobs.runner import new_holder_id, run_job
from audience_sync.runtime import Runtime

logger = logging.getLogger(__name__)

FIRST_TICK_S = 1.0
"""Delay before the first try of every job after start-up."""


class JobScheduler:
    """Owns a ``BackgroundScheduler``; :meth:`join` (after ``stop`` is set) shuts it down."""

    def __init__(self, runtime: Runtime, stop: threading.Event) -> None:
        self.runtime = runtime
        self.stop = stop
        self.holder = new_holder_id()
        specs = builtin_jobs()
        self.jobs = {n: s for n, s in specs.items() if s.enabled(runtime.settings.values)}
        # One thread per job: a long audit never delays retry_due.
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(self.jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )
        first = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=FIRST_TICK_S)
        for name, spec in sorted(self.jobs.items()):
            self.scheduler.add_job(
                self._tick,
                "interval",
                args=[spec],
                seconds=spec.interval_s(runtime.settings.values),
                id=name,
                name=name,
                next_run_time=first,
            )

    def _tick(self, spec: JobSpec) -> None:
        if self.stop.is_set():
            return
        try:
            run_job(self.runtime, spec, holder=self.holder, stop=self.stop)
        except Exception:
            # The database may be away; the next tick tries again.
            logger.exception(
                "job tick failed", extra={"action": "job_tick_error", "job": spec.name}
            )

    def start(self) -> JobScheduler:
        """Start the scheduler thread."""
        self.scheduler.start()
        logger.info(
            "scheduler started",
            extra={"action": "scheduler_started", "jobs": sorted(self.jobs), "holder": self.holder},
        )
        return self

    def join(self, timeout: float | None = None) -> None:
        """Stop scheduling and wait for running jobs (they see ``stop`` and end their page)."""
        self.scheduler.shutdown(wait=True)
        logger.info("scheduler stopped", extra={"action": "scheduler_stopped"})


def start_scheduler(runtime: Runtime, stop: threading.Event) -> JobScheduler:
    """Start this process's scheduler; it runs until ``stop`` is set and :meth:`join` is called."""
    return JobScheduler(runtime, stop).start()
