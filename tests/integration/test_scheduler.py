"""The scheduler, its database lease and the job-run record (SPEC §7), on SQLite and
PostgreSQL, in process and as real ``audience-sync scheduler`` processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audience_sync.cli import main
from audience_sync.core.states import JobRunOutcome
from audience_sync.jobs.registry import JobResult, JobSpec
from audience_sync.jobs.runner import run_job
from audience_sync.store import jobs as store
from audience_sync.store.engine import create_engine
from audience_sync.store.schema import (
    counters,
    firehose_messages,
    job_runs,
    outbox,
    workspaces,
)


def test_a_lease_is_exclusive_until_it_expires(engine):
    with engine.begin() as conn:
        assert store.acquire(conn, job="j", holder="a", now=100, lease_s=10)
        assert not store.acquire(conn, job="j", holder="b", now=105, lease_s=10)
        # a died without renewing: its lease runs out and b takes the job.
        assert store.acquire(conn, job="j", holder="b", now=111, lease_s=10)
        assert not store.renew(conn, job="j", holder="a", now=112, lease_s=10)
        assert store.renew(conn, job="j", holder="b", now=112, lease_s=10)
        store.release(conn, job="j", holder="b", now=113)
        # Free again, but a scheduled try waits for the interval since the last start.
        assert not store.acquire(conn, job="j", holder="c", now=115, lease_s=10, interval_s=10)
        assert store.acquire(conn, job="j", holder="c", now=121, lease_s=10, interval_s=10)


def test_every_run_is_recorded_with_its_outcome_counts_and_error(runtime):
    def ok(_ctx):
        return JobResult(counts={"things": 3}, details={"note": "x"})

    def broken(_ctx):
        raise RuntimeError("boom")

    good = run_job(runtime, JobSpec(name="good", run=ok, default_interval_s=60), holder="h")
    bad = run_job(runtime, JobSpec(name="bad", run=broken, default_interval_s=60), holder="h")
    assert good is not None and good.outcome is JobRunOutcome.OK
    assert bad is not None and bad.outcome is JobRunOutcome.FAILED
    with runtime.engine.connect() as conn:
        runs = {r.job: r for r in store.recent_runs(conn)}
    assert runs["good"].counts == {"things": 3}
    assert runs["good"].details == {"note": "x"}
    assert runs["good"].finished_at is not None
    assert runs["bad"].error == "RuntimeError: boom"
    # Not due again within its interval; a forced run (jobs run NAME) goes at once.
    spec = JobSpec(name="good", run=ok, default_interval_s=60)
    assert run_job(runtime, spec, holder="other") is None
    assert run_job(runtime, spec, holder="other", force=True) is not None


def test_a_dead_holders_open_run_is_closed_by_the_next_holder(runtime):
    now = time.time()
    with runtime.engine.begin() as conn:
        store.acquire(conn, job="j", holder="dead", now=now - 120, lease_s=60)
        store.start_run(conn, job="j", holder="dead", now=now - 120)
    spec = JobSpec(name="j", run=lambda _c: JobResult(), default_interval_s=1)
    assert run_job(runtime, spec, holder="alive") is not None
    with runtime.engine.connect() as conn:
        runs = store.recent_runs(conn, job="j")
    assert [(r.holder, r.outcome) for r in runs] == [("alive", "ok"), ("dead", "failed")]
    assert "abandoned" in (runs[1].error or "")


def test_jobs_run_command_runs_one_job_now(database_url):
    env = {"AUDIENCE_SYNC_DATABASE__URL": database_url, "AUDIENCE_SYNC_LOG__LEVEL": "WARNING"}
    result = CliRunner().invoke(main, ["jobs", "run", "prune"], env=env)
    assert result.exit_code == 0, result.output
    assert "prune: ok" in result.output
    assert "firehose_ids: 0" in result.output
    unknown = CliRunner().invoke(main, ["jobs", "run", "nope"], env=env)
    assert unknown.exit_code == 2
    assert "retry_due" in unknown.output


def test_retry_due_reads_only_the_due_range_of_its_index(runtime):
    from audience_sync.jobs.retry_due import SPEC as RETRY_DUE
    from audience_sync.store.retries import due_range

    now = time.time()
    with runtime.engine.begin() as conn:
        conn.execute(
            workspaces.insert().values(id=1, endpoint="e", key_fingerprint="f", created_at=0)
        )
        rows = [
            # a retry due 5 s ago, still leased by a sender that died
            ("dead-sender", now - 5, 2, "w1", now - 1),
            ("fresh", now - 1, 0, None, None),  # new work, due
            ("later", now + 600, 3, None, None),  # a retry not due yet
        ]
        conn.execute(
            outbox.insert(),
            [
                {
                    "workspace_id": 1,
                    "external_id": e,
                    "state": "pending",
                    "generation": 1,
                    "due_at": due,
                    "attempts": attempts,
                    "claimed_by": by,
                    "claimed_until": until,
                    "enqueued_at": 0,
                }
                for e, due, attempts, by, until in rows
            ],
        )
    report = run_job(runtime, RETRY_DUE, holder="t", force=True)
    assert report is not None
    assert report.result.counts["due_retries"] == 1
    assert report.result.counts["leases_released"] == 1
    assert report.result.counts["late_s"] >= 5
    with runtime.engine.connect() as conn:
        held = conn.execute(
            sa.select(outbox.c.claimed_by).where(outbox.c.external_id == "dead-sender")
        ).scalar_one()
        assert held is None
        query = sa.select(outbox.c.external_id).where(due_range(now)).order_by(outbox.c.due_at)
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")  # tiny table: ask for the index
            plan = " ".join(str(r) for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_outbox_state_due" in plan


def test_prune_deletes_only_what_is_past_its_window(make_runtime):
    from audience_sync.jobs.prune import SPEC as PRUNE

    runtime = make_runtime(**{"jobs.prune.firehose_ids_s": 100, "jobs.prune.counters_s": 86400 * 3})
    now = time.time()
    with runtime.engine.begin() as conn:
        conn.execute(
            firehose_messages.insert(),
            [
                {"id": "old", "type": "t", "account_id": 1, "received_at": now - 200},
                {"id": "new", "type": "t", "account_id": 1, "received_at": now - 10},
            ],
        )
        conn.execute(
            counters.insert(),
            [
                {"day": "2000-01-01", "scope": "global", "reason": "r", "count": 1},
                {"day": "2999-01-01", "scope": "global", "reason": "r", "count": 1},
            ],
        )
    report = run_job(runtime, PRUNE, holder="t", force=True)
    assert report is not None
    assert report.result.counts["firehose_ids"] == 1
    assert report.result.counts["daily_rows"] == 1
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(firehose_messages.c.id)).scalars().all() == ["new"]
        assert conn.execute(sa.select(counters.c.day)).scalars().all() == ["2999-01-01"]


# --- two scheduler processes on PostgreSQL ------------------------------------------------------

INTERVALS = {"retry_due": 1.0, "cleanup_removed": 1.0, "prune": 2.0}


def _scheduler(url: str, log_path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    env |= {
        "AUDIENCE_SYNC_DATABASE__URL": url,
        "AUDIENCE_SYNC_JOBS__LEASE_S": "3",
        "AUDIENCE_SYNC_JOBS__AUDIT_BRAZE__ENABLED": "false",
        **{f"AUDIENCE_SYNC_JOBS__{n.upper()}__INTERVAL_S": str(s) for n, s in INTERVALS.items()},
    }
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "audience_sync", "scheduler"], env=env, stderr=log
        )


def _runs(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(job_runs).order_by(job_runs.c.job, job_runs.c.started_at)
        ).all()


def _wait_for(engine, predicate, procs, what: str, timeout_s: float = 120.0) -> list[sa.Row]:
    deadline = time.monotonic() + timeout_s  # generous: the machine is shared
    while True:
        runs = _runs(engine)
        if predicate(runs):
            return runs
        for p in procs:
            assert p.poll() is None, f"a scheduler exited early ({what})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _pid(holder: str) -> int:
    return int(holder.split(":")[1])


@pytest.mark.external_service
def test_two_schedulers_run_each_job_once_per_interval_and_survive_a_kill(request, tmp_path):
    url = request.getfixturevalue("_pg_database")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(job_runs.delete())
        conn.exec_driver_sql("DELETE FROM job_leases")
    first = _scheduler(url, tmp_path / "a.log")
    second = _scheduler(url, tmp_path / "b.log")
    procs = [first, second]
    try:
        runs = _wait_for(
            engine,
            lambda rs: (
                sum(r.job == "retry_due" for r in rs) >= 6
                and sum(r.job == "prune" for r in rs) >= 2
            ),
            procs,
            "runs of both schedulers",
        )
        holder = [r for r in runs if r.job == "retry_due"][-1].holder
        victim = next(p for p in procs if p.pid == _pid(holder))
        survivor = next(p for p in procs if p is not victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed_at = time.time()
        runs = _wait_for(
            engine,
            lambda rs: (
                sum(
                    r.job == "retry_due"
                    and r.started_at > killed_at
                    and _pid(r.holder) == survivor.pid
                    for r in rs
                )
                >= 3
            ),
            [survivor],
            "the survivor to take the job over",
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
        engine.dispose()
    assert survivor.returncode == 0, (tmp_path / "a.log").read_text() + (
        tmp_path / "b.log"
    ).read_text()

    for job, interval in INTERVALS.items():
        mine = [r for r in runs if r.job == job]
        assert len(mine) >= 2, job
        for before, after in itertools.pairwise(mine):
            # Never two runs of one job at once, and never two within one interval.
            assert before.finished_at is None or after.started_at >= before.finished_at, job
            assert after.started_at - before.started_at >= interval * 0.9 - 0.01, job
    assert all(r.outcome in ("ok", "failed", "running") for r in runs)
    assert not [r for r in runs if r.outcome == "failed" and "abandoned" not in (r.error or "")]
