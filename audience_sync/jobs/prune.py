"""``prune`` (SPEC §7): delete what is past its window. Windows are config keys:
``jobs.prune.firehose_ids_s`` (processed Firehose message ids: a retry by mParticle older than
this is applied again, which is harmless since messages carry state, not operations),
``jobs.prune.counters_s`` (per-day counters and data points) and ``jobs.prune.job_runs_s``
(the job-run log and finished cleanups); Currents dedup keys past ``currents.dedup_window_s``."""

from __future__ import annotations

from audience_sync.currents.maintenance import prune_currents_dedup
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.store import cleanups, jobs, prune
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.transactions import in_transaction


def run(ctx: JobContext) -> JobResult:
    """Each kind in its own transaction."""
    now = ctx.clock()
    settings = ctx.runtime.settings
    engine = ctx.runtime.engine
    firehose_before = now - settings.get("jobs.prune.firehose_ids_s")
    counters_before = now - settings.get("jobs.prune.counters_s")
    runs_before = now - settings.get("jobs.prune.job_runs_s")
    # Membership message ids are kept with the journal (its own file on SQLite).
    firehose_ids = sum(
        in_transaction(each, lambda c: prune.prune_firehose_ids(c, before=firehose_before))
        for each in dict.fromkeys([engine, journal_engine(engine)])
    )
    counts = {
        "firehose_ids": firehose_ids,
        "daily_rows": in_transaction(
            engine, lambda c: prune.prune_daily(c, before=counters_before)
        ),
        "job_runs": in_transaction(engine, lambda c: jobs.prune_runs(c, before=runs_before)),
        "cleanups": in_transaction(engine, lambda c: cleanups.prune_done(c, before=runs_before)),
        "currents_dedup_keys": prune_currents_dedup(engine, settings, now=now),
    }
    return JobResult(counts=counts)


SPEC = JobSpec(
    name="prune",
    run=run,
    default_interval_s=3600.0,
    description="delete Firehose message ids, counters and job runs past their windows",
)
