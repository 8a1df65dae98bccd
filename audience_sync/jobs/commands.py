"""What ``audience-sync jobs run NAME`` and ``audience-sync reconcile`` do (the CLI stays thin)."""

from __future__ import annotations

import sys
import typing as t
from collections.abc import Callable

import click

from audience_sync.core.states import JobRunOutcome
from audience_sync.jobs.audit_braze import Auditor, AuditReport
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec, builtin_jobs
from audience_sync.jobs.runner import new_holder_id, run_job
from audience_sync.runtime import Runtime
from audience_sync.settings import Settings
from audience_sync.store.audit import workspaces_to_audit

Echo = Callable[[str], None]


def run_now(
    settings: Settings,
    name: str,
    *,
    echo: Echo,
    check_schema: Callable[[Runtime], None] | None = None,
) -> int:
    """Run one job now, whatever its interval; 2 for an unknown name, 1 if it failed or its
    lease is held by another process."""
    specs = builtin_jobs()
    spec = specs.get(name)
    if spec is None:
        echo(f"unknown job {name!r}; jobs: {', '.join(sorted(specs))}")
        return 2
    runtime = Runtime.from_settings(settings)
    try:
        if check_schema is not None:
            check_schema(runtime)
        report = run_job(runtime, spec, holder=new_holder_id(), force=True)
    finally:
        runtime.engine.dispose()
    if report is None:
        echo(f"{name}: another process holds the job's lease; try again when it has finished")
        return 1
    echo(f"{name}: {report.outcome} (run {report.run_id})")
    for key, value in sorted(report.result.counts.items()):
        echo(f"  {key}: {value}")
    if report.error:
        echo(f"  error: {report.error}")
    return 0 if report.outcome is JobRunOutcome.OK else 1


def _summary(report: AuditReport, *, dry_run: bool, echo: Echo) -> None:
    echo(f"users read: {report.users_read}")
    if report.users_unread:
        echo(f"users not read (Braze did not answer; next audit): {report.users_unread}")
    echo(f"users with drift: {report.users_drifted}")
    echo("drift found by kind:" if report.drift_by_kind else "drift found by kind: none")
    for kind, n in sorted(report.drift_by_kind.items()):
        echo(f"  {kind}: {n}")
    if report.drift_by_audience:
        echo("drift per connection and audience (audience 0: not about one audience):")
        for row in report.details()["drift"]:
            echo(
                f"  connection {row['account_id']} audience {row['audience_id']} {row['kind']}: "
                f"{row['users']} (e.g. {', '.join(row['sample'])})"
            )
    for reason, n in sorted(report.skipped_workspaces.items()):
        echo(f"workspaces skipped ({reason}): {n}")
    echo(f"repairs queued: {report.repairs_queued}")
    echo(f"data points the repair will cost: {report.repair_datapoints}")
    echo(f"export requests: {report.requests}")
    if dry_run:
        echo("dry run: nothing written")


def reconcile(
    settings: Settings,
    *,
    account_id: int | None,
    dry_run: bool,
    echo: Echo,
    check_schema: Callable[[Runtime], None] | None = None,
) -> int:
    """Audit every user of the selected connections now (SPEC §7), under the audit's lease
    (recorded as an ``audit_braze`` run) unless ``dry_run``; a progress bar on a terminal."""
    runtime = Runtime.from_settings(settings)
    try:
        if check_schema is not None:
            check_schema(runtime)
        if account_id is not None:
            with runtime.engine.connect() as conn:
                if not workspaces_to_audit(conn, account_id=account_id):
                    echo(f"no active connection {account_id} to audit")
                    return 2
        holder: dict[str, t.Any] = {}

        def audit(ctx: JobContext) -> JobResult:
            auditor = Auditor(
                runtime.engine, settings, stop=ctx.stop, keep_alive=ctx.keep_alive, clock=ctx.clock
            )
            try:
                total = auditor.total_users(account_id=account_id)
                with click.progressbar(
                    length=total, label="auditing", file=sys.stderr if _tty() else _Null()
                ) as bar:
                    auditor.progress = bar.update
                    report = auditor.run(full=True, dry_run=dry_run, account_id=account_id)
            finally:
                auditor.close()
            holder["report"] = report
            return JobResult(counts=report.counts(), details=report.details())

        if dry_run:
            audit(JobContext(runtime=runtime))
        else:
            spec = JobSpec(name="audit_braze", run=audit, default_interval_s=0)
            ran = run_job(runtime, spec, holder=new_holder_id(), force=True)
            if ran is None:
                echo("the audit is running in another process; try again when it has finished")
                return 1
            if ran.outcome is not JobRunOutcome.OK:
                echo(f"reconcile failed: {ran.error}")
                return 1
    finally:
        runtime.engine.dispose()
    _summary(holder["report"], dry_run=dry_run, echo=echo)
    return 0


def _tty() -> bool:
    return sys.stderr.isatty()


class _Null:
    """A file that drops what is written: no progress bar off a terminal (logs stay JSON)."""

    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
