"""The whole engine under load, as it is deployed (SPEC §10, issue 6): in one run, Firehose
acknowledgement latency at a sustained rate *while delivery runs*, membership changes/s, users/s
delivered and their ratio to the loopback capacity of the fake Braze measured in the same run,
engine CPU µs per delivered user, request fill, data points against the minimum, peak RSS.

    scripts/bench system [--quick] [--faults] [--database sqlite|postgresql] [--workers 1 2 4]

SQLite runs ``audience-sync run`` (senders in its child process); PostgreSQL runs ``serve``
and N ``worker`` processes on a throwaway cluster (``scripts/pg-start``). The engine runs as the
real commands with a config file; a backlog of dirty users is seeded first (``ANALYZE`` after,
on PostgreSQL), then the Firehose load starts and both run together.

``--faults``: the fake answers 10 % 429, 5 % 5xx and drops 2 % of connections, and the engine
is killed with SIGKILL several times mid-run (and restarted, as a supervisor would). At the end
every seeded user's Braze attributes are compared with the desired ones; the differences must
be zero. Prints a table, writes JSON (``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from collections.abc import Sequence
from pathlib import Path

import requests
import sqlalchemy as sa

from audience_sync.core.attributes import Contribution, Membership, desired_attributes
from audience_sync.core.connection import parse_send_segments_as
from audience_sync.firehose import testing as ft
from audience_sync.sender_process import CHILD_NAMES
from audience_sync.store.engine import create_engine
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import firehose_journal, outbox
from bench import firehose
from bench.capacity import client_cpu, loopback_capacity
from bench.delivery import AUDIENCES, ROOT, _free_port, fake_state, seed, start_fake_braze

SEED_ACCOUNT = 778
SEED_KEY = "bench-key"
INTAKE_KEY = "bench-intake-key"
MODE = "array+string+per_segment"
FAULTS = {"rate_429": 0.1, "rate_5xx": 0.05, "rate_drop": 0.02}
KILLS = 3


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    try:
        return [
            int(c)
            for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if c.strip()
        ]
    except OSError:
        return []


class Engine:
    """The engine's processes (``run``, or ``serve`` + N ``worker``), restartable."""

    def __init__(self, config: Path, *, database: str, workers: int, log: Path) -> None:
        self.config = config
        self.commands = [["run"]] if database == "sqlite" else [["serve"]] + [["worker"]] * workers
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cpu_gone = 0.0  # CPU of processes that were killed
        self.rss_mb = 0.0

    def start(self) -> None:
        with self.log.open("a") as log:
            self.procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "audience_sync", "--config", str(self.config), *cmd],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                for cmd in self.commands
            ]

    def pids(self) -> list[int]:
        pids = []
        for proc in self.procs:
            pids.append(proc.pid)
            pids.extend(_children(proc.pid))
        return pids

    def applier_pids(self) -> set[int]:
        """run's journal applier children (named by the engine), which the sender CPU leaves
        out."""
        return {p for p in _children(self.procs[0].pid) if _comm(p) == CHILD_NAMES["applier"]}

    def sender_pids(self) -> list[int]:
        """The processes that send: run's sender child, or the workers (whose journal applier
        thread is counted with them)."""
        if self.commands == [["run"]]:
            appliers = self.applier_pids()
            return [p for p in _children(self.procs[0].pid) if p not in appliers]
        return [p.pid for p in self.procs[1:]]

    def cpu_s(self) -> float:
        """CPU seconds of the sending processes (killed ones included)."""
        return self.cpu_gone + sum(_cpu_s(p) for p in self.sender_pids())

    def sample_rss(self) -> None:
        self.rss_mb = max([self.rss_mb, *(_peak_rss_mb(p) for p in self.pids())])

    def kill(self) -> None:
        """SIGKILL every engine process (the run's sender child too), as a crash would."""
        self.sample_rss()
        pids = self.pids()
        self.cpu_gone += sum(_cpu_s(p) for p in self.sender_pids())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait(30)

    def stop(self) -> None:
        self.sample_rss()
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the engine did not become ready")


def _write_config(path: Path, *, url: str, port: int, senders: int) -> None:
    path.write_text(
        f"[database]\nurl = {json.dumps(url)}\n"
        f"[server]\nport = {port}\nthreads = 8\n"
        f"[firehose]\ntokens = [{json.dumps(firehose.TOKEN)}]\n"
        '[braze]\nallowed_custom_endpoints = ["http://127.0.0.1:"]\ntimeout_s = 5.0\n'
        f"[delivery]\nworkers = {senders}\nlease_s = 10.0\n"
        '[log]\nlevel = "WARNING"\n'
    )


def _expected(n_users: int, prefix: str) -> dict[str, dict[str, t.Any]]:
    """What every seeded user should hold in Braze (the seed's memberships, in MODE)."""
    parts = parse_send_segments_as(MODE)
    ids = list(AUDIENCES)
    by_k = {}
    for k in range(1, len(ids) + 1):
        memberships = [
            Membership(audience_id=a, name=AUDIENCES[a], is_member=True) for a in ids[:k]
        ]
        contribution = Contribution(account_id=SEED_ACCOUNT, parts=parts, memberships=memberships)
        by_k[k] = dict(desired_attributes([contribution], array_max_length=500).attributes)
    return {f"{prefix}{i}": by_k[1 + i % len(ids)] for i in range(n_users)}


def _normal(attributes: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    return {
        k: sorted(v) if isinstance(v, list) else v
        for k, v in attributes.items()
        if k != "external_id" and isinstance(v, str | bool | int | float | list)
    }


def _differences(state: dict, expected: dict[str, dict[str, t.Any]]) -> int:
    users = state["users"]
    return sum(1 for u, want in expected.items() if _normal(users.get(u, {})) != _normal(want))


def _pending(engine: sa.Engine, workspace_id: int, *, exact: bool = True) -> int:
    """Users of the workspace left in the outbox; not ``exact``: 1 if any, else 0 (polled
    every 0.2 s, the count of 60,000 rows took PostgreSQL 20 ms of CPU, a tenth of a core)."""
    query = sa.select(outbox.c.external_id).where(outbox.c.workspace_id == workspace_id)
    with engine.connect() as conn:
        if exact:
            return conn.execute(
                sa.select(sa.func.count()).select_from(query.subquery())
            ).scalar_one()
        return 1 if conn.execute(query.limit(1)).first() is not None else 0


def _journal_waiting(engine: sa.Engine) -> int:
    with journal_engine(engine).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(firehose_journal)).scalar_one()


def _wait_applied(engine: sa.Engine, started: float, timeout_s: float) -> float | None:
    """Seconds from ``started`` until every accepted Firehose message was applied."""
    deadline = time.perf_counter() + timeout_s
    while _journal_waiting(engine):
        if time.perf_counter() > deadline:
            return None
        time.sleep(0.05)
    return time.perf_counter() - started


def run_one(args: argparse.Namespace, database: str, workers: int) -> dict[str, t.Any]:
    """One configuration: seed, start the engine, load it, measure."""
    tmp = Path(tempfile.mkdtemp(prefix="audience-sync-bench-"))
    pg_dir = None
    if database == "postgresql":
        out = subprocess.run(
            [str(ROOT / "scripts/pg-start")], check=True, capture_output=True, text=True
        ).stdout.split()
        url, pg_dir = out[0], out[1]
    else:
        url = f"sqlite:///{tmp}/bench.db"
    fake, fake_url = start_fake_braze([])
    engine_procs: Engine | None = None
    try:
        capacity = loopback_capacity(fake_url, SEED_KEY, threads=2)
        client = client_cpu(fake_url, SEED_KEY)
        if args.faults:  # after measuring the capacity: faults from here on
            requests.post(fake_url + "/_faults", json=FAULTS, timeout=10).raise_for_status()
        engine = create_engine(url)
        upgrade(engine)
        prefix = "seeded-"
        workspace_id = seed(
            engine,
            url=fake_url,
            n_users=args.users,
            mode=MODE,
            now=time.time(),
            account=SEED_ACCOUNT,
            prefix=prefix,
        )
        before = fake_state(fake_url)["stats"]
        port = _free_port()
        config = tmp / "bench.toml"
        _write_config(config, url=url, port=port, senders=args.senders)
        engine_procs = Engine(config, database=database, workers=workers, log=tmp / "engine.log")

        count = max(1, round(args.rate * args.duration / args.profiles))
        # per_segment only: the seeded users' attribute keys stay theirs (data points per key).
        settings = ft.account_settings(
            brazeInstance="custom",
            customRestEndpoint=fake_url,
            restApiKey=INTAKE_KEY,
            sendSegmentsAs="per_segment",
        )
        bodies, changes = firehose._bodies(count, args.profiles, seed=1, settings=settings)
        started = time.perf_counter()
        engine_procs.start()
        _wait_ready(port)
        cpu_start = engine_procs.cpu_s()

        drained: dict[str, float] = {"kills": 0}

        def watch() -> None:
            kills_at = [args.users * f for f in (0.8, 0.5, 0.25)][:KILLS] if args.faults else []
            while True:
                left = _pending(engine, workspace_id, exact=bool(kills_at))
                engine_procs.sample_rss()
                if kills_at and left <= kills_at[0]:
                    kills_at.pop(0)
                    drained["kills"] += 1
                    engine_procs.kill()
                    engine_procs.start()
                    _wait_ready(port)
                if left == 0:
                    drained["s"] = time.perf_counter() - started
                    drained["cpu_s"] = engine_procs.cpu_s() - cpu_start
                    return
                if time.perf_counter() - started > args.timeout:
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        headers = {"Authorization": f"Token {firehose.TOKEN}", "Content-Type": "application/json"}
        load_started = time.perf_counter()
        ack = firehose._load(
            f"http://127.0.0.1:{port}",
            headers,
            bodies,
            changes,
            args.rate,
            args.profiles,
            args.threads,
        )
        applied_s = _wait_applied(engine, load_started, args.timeout)
        applier_cpu_s = sum(_cpu_s(p) for p in engine_procs.applier_pids())
        watcher.join()
        if args.faults:  # and the intake's users are delivered too, before comparing
            deadline = time.perf_counter() + args.timeout
            while _pending(engine, workspace_id) and time.perf_counter() < deadline:
                time.sleep(0.5)
        engine_procs.stop()
        peak_rss_mb = engine_procs.rss_mb
        engine_procs = None
        state = fake_state(fake_url)
        stats = state["stats"]
        per_request = stats["objects_per_request"][len(before["objects_per_request"]) :]
        seconds = drained.get("s")
        users_per_s = args.users / seconds if seconds else 0.0
        expected = _expected(args.users, prefix)
        minimum = sum(
            sum(len(v) if isinstance(v, list) else 1 for v in _normal(a).values())
            for a in expected.values()
        )
        seeded_keys = {k for a in expected.values() for k in _normal(a)}
        seeded_points = sum(
            stats["datapoints_by_key"].get(k, 0) - before["datapoints_by_key"].get(k, 0)
            for k in seeded_keys
        )
        return {
            "database": database,
            "workers": workers if database == "postgresql" else 1,
            "senders_per_process": args.senders,
            "faults": args.faults,
            "sigkills": int(drained["kills"]),
            "seeded_users": args.users,
            "ack_ms": ack["latency_ms"],
            "ack_errors": ack["errors"],
            "offered_profiles_per_s": args.rate,
            "membership_changes_per_s": ack["membership_changes_per_s"],
            # Acknowledged changes are durable (the journal); applied = in the membership tables.
            "membership_changes_applied_per_s": round(changes / applied_s) if applied_s else None,
            # run's applier child (after any SIGKILL: only its last life); a worker applies in
            # its own process, counted with its senders.
            "applier_cpu_us_per_applied_change": (
                round(applier_cpu_s / changes * 1e6, 1) if applier_cpu_s and changes else None
            ),
            "users_per_s": round(users_per_s),
            "loopback_capacity_users_per_s": capacity["users_per_s"],
            "ratio_to_capacity": round(users_per_s / max(1, capacity["users_per_s"]), 3),
            "engine_cpu_us_per_delivered_user": (
                round(drained["cpu_s"] / max(1, sum(per_request)) * 1e6, 1)
                if "cpu_s" in drained
                else None
            ),
            "delivered_objects": sum(per_request),
            "full_request_ratio": round(
                sum(1 for n in per_request if n >= 75) / max(1, len(per_request)), 3
            ),
            "seeded_datapoints": seeded_points,
            "seeded_datapoints_minimum": minimum,
            "final_differences": _differences(state, expected),
            "violations": stats["violations"],
            "peak_rss_mb": round(peak_rss_mb, 1),
            "client_cpu_us_per_request": client,
        }
    finally:
        if engine_procs is not None:
            engine_procs.stop()
        fake.kill()
        if pg_dir:
            subprocess.run([str(ROOT / "scripts/pg-start"), "stop", pg_dir], check=False)


def _table(results: Sequence[dict[str, t.Any]]) -> str:
    head = (
        f"{'db':<10} {'wk':>2} {'ack p50':>7} {'p95':>6} {'p99':>6} {'chg/s':>7} {'applied':>7} "
        f"{'users/s':>8} "
        f"{'cap/s':>8} {'ratio':>5} {'µs/user':>7} {'fill':>5} {'dp/min':>7} {'diff':>4} "
        f"{'RSS MB':>6}"
    )
    lines = [head]
    for r in results:
        ack = r["ack_ms"] or {}
        lines.append(
            f"{r['database']:<10} {r['workers']:>2} {ack.get('p50', '-'):>7} "
            f"{ack.get('p95', '-'):>6} {ack.get('p99', '-'):>6} "
            f"{r['membership_changes_per_s']:>7} "
            f"{r['membership_changes_applied_per_s'] or '-':>7} {r['users_per_s']:>8} "
            f"{r['loopback_capacity_users_per_s']:>8} {r['ratio_to_capacity']:>5} "
            f"{r['engine_cpu_us_per_delivered_user'] or '-':>7} {r['full_request_ratio']:>5} "
            f"{r['seeded_datapoints'] / max(1, r['seeded_datapoints_minimum']):>7.3f} "
            f"{r['final_differences']:>4} {r['peak_rss_mb'] or '-':>6}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench system", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small and short: under a minute")
    parser.add_argument("--faults", action="store_true")
    parser.add_argument(
        "--database", action="append", choices=["sqlite", "postgresql"], default=None
    )
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="PostgreSQL")
    parser.add_argument("--users", type=int, default=None, help="seeded dirty users")
    parser.add_argument("--senders", type=int, default=4, help="sender threads per process")
    parser.add_argument("--rate", type=float, default=10_000, help="Firehose profiles/s")
    parser.add_argument("--duration", type=float, default=None, help="seconds of Firehose load")
    parser.add_argument("--profiles", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4, help="Firehose client threads")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(list(argv))
    databases = args.database or (["sqlite"] if args.quick else ["sqlite", "postgresql"])
    workers = args.workers or ([2] if args.quick else [1, 2, 4])
    args.users = args.users or (60_000 if args.quick else 200_000)
    args.duration = args.duration or (8.0 if args.quick else 20.0)
    results = []
    for database in databases:
        for n in workers if database == "postgresql" else [1]:
            result = run_one(args, database, n)
            results.append(result)
            sys.stdout.write(json.dumps({"suite": "system", **result}) + "\n")
    sys.stdout.write(_table(results) + "\n")
    machine = {
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    bad = [r for r in results if r["final_differences"] or r["violations"] or r["ack_errors"]]
    return 1 if bad else 0
