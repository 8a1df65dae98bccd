"""``currents_expire`` (SPEC §7, §6.5): Currents events still undelivered after
``currents.retention_s`` move to the dead-letter store with their reason (kept, counted and
replayable with ``audience-sync replay --feed NAME``), never deleted."""

from __future__ import annotations

from audience_sync.currents.maintenance import currents_expire
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec


def run(ctx: JobContext) -> JobResult:
    """Move what is past retention, in one transaction."""
    moved = currents_expire(ctx.runtime.engine, ctx.runtime.settings, now=ctx.clock())
    return JobResult(counts={"dead_lettered": moved})


SPEC = JobSpec(
    name="currents_expire",
    run=run,
    default_interval_s=600.0,
    description="dead-letter Currents events past currents.retention_s",
)
