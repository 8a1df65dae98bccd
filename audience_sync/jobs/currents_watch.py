"""``currents_watch`` (SPEC §7): import new Avro files of ``currents.watch_dir``, each file once
(the importer records path and checksum), through the same importer as ``currents import``."""

from __future__ import annotations

from audience_sync.currents.importer import currents_watch
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec


def run(ctx: JobContext) -> JobResult:
    """One scan of the watch directory; nothing when none is configured."""
    summary = currents_watch(ctx.runtime.engine, ctx.runtime.settings)
    counts = {
        "files": summary.files,
        "imported": summary.imported,
        "already_imported": summary.already_imported,
        "failed": len(summary.failed),
        "events": summary.events,
        "forwarded": summary.forwarded,
    }
    details = {"failed": [{"path": p, "error": e} for p, e in summary.failed]} or None
    return JobResult(counts=counts, details=details if summary.failed else None)


SPEC = JobSpec(
    name="currents_watch",
    run=run,
    default_interval_s=60.0,
    description="import new Braze Currents files of currents.watch_dir",
)
