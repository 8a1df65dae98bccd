"""Braze delivery benchmark (SPEC §10): users/s end to end, as a ratio to the loopback capacity
of the local fake Braze (running in its own process) measured in the same run, engine CPU µs
per delivered user, the client's CPU per request beside a bare urllib3 pool, request fill
ratio, data points, peak RSS.

    scripts/bench delivery [--users 200000] [--workers 4] [--database-url URL] [--mode MODE]

Users are seeded straight into the tables (one connection, three audiences, every user dirty),
then this process runs the real senders until the outbox is empty.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from audience_sync.core.connection import effective_settings
from audience_sync.core.states import (
    AudienceState,
    ConnectionState,
    OutboxState,
    WorkspaceState,
)
from audience_sync.runtime import Runtime
from audience_sync.settings import load_settings
from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import (
    audiences,
    connections,
    memberships,
    outbox,
    users,
    workspaces,
)
from bench.capacity import CAPACITY_PREFIX, client_cpu, loopback_capacity

ACCOUNT = 777
REST_KEY = "bench-key"
AUDIENCES = {201: "Bench One", 202: "Bench Two", 203: "Bench Three"}
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_braze(extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.braze_server", "--port", str(port), *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/_state", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("fake Braze did not start")


def fake_state(url: str) -> dict:
    with urllib.request.urlopen(url + "/_state", timeout=60) as response:
        return json.loads(response.read())


def seed(
    engine: sa.Engine,
    *,
    url: str,
    n_users: int,
    mode: str,
    now: float,
    account: int = ACCOUNT,
    prefix: str = "user-",
) -> int:
    """One connection writing to the fake Braze; every user in 1-3 audiences and dirty."""
    account_settings = {
        "restApiKey": REST_KEY,
        "brazeInstance": "custom",
        "customRestEndpoint": url,
        "sendSegmentsAs": mode,
    }
    effective = effective_settings(account, account_settings, overrides={})
    with engine.begin() as conn:
        workspace_id = conn.execute(
            workspaces.insert()
            .values(
                endpoint=url, key_fingerprint="bench", state=WorkspaceState.ACTIVE, created_at=now
            )
            .returning(workspaces.c.id)
        ).scalar_one()
        conn.execute(
            connections.insert().values(
                account_id=account,
                account_settings=account_settings,
                settings_fingerprint=effective.fingerprint,
                state=ConnectionState.ACTIVE,
                settings_errors=[],
                workspace_id=workspace_id,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            audiences.insert(),
            [
                {
                    "account_id": account,
                    "audience_id": a,
                    "name": name,
                    "state": AudienceState.ACTIVE,
                    "cleanup": False,
                    "created_at": now,
                    "updated_at": now,
                }
                for a, name in AUDIENCES.items()
            ],
        )
    chunk = 20_000
    ids = list(AUDIENCES)
    for start in range(0, n_users, chunk):
        rows = range(start, min(n_users, start + chunk))
        with engine.begin() as conn:
            conn.execute(
                users.insert(),
                [
                    {"account_id": account, "external_id": f"{prefix}{i}", "updated_at": now}
                    for i in rows
                ],
            )
            conn.execute(
                memberships.insert(),
                [
                    {
                        "account_id": account,
                        "external_id": f"{prefix}{i}",
                        "audience_id": ids[j],
                        "is_member": True,
                        "changed_at": now,
                    }
                    for i in rows
                    for j in range(1 + i % len(ids))
                ],
            )
            conn.execute(
                outbox.insert(),
                [
                    {
                        "workspace_id": workspace_id,
                        "external_id": f"{prefix}{i}",
                        "state": OutboxState.PENDING,
                        "generation": 1,
                        "due_at": now,
                        "attempts": 0,
                        "enqueued_at": now,
                    }
                    for i in rows
                ],
            )
    if engine.dialect.name == "postgresql":
        # Fresh statistics, as after any bulk load: without them the planner scans per claim.
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return workspace_id


def pending(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench delivery")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--mode", default="array+string+per_segment")
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--fake-args", default="", help="extra fake Braze flags, e.g. '--rate-429 0.1'"
    )
    args = parser.parse_args(list(argv))

    tmp = tempfile.TemporaryDirectory()
    url = args.database_url or f"sqlite:///{tmp.name}/bench.db"
    engine = create_engine(url)
    upgrade(engine)
    fake, fake_url = start_fake_braze(args.fake_args.split())
    try:
        capacity = loopback_capacity(fake_url, REST_KEY, threads=min(args.workers, 4))
        client = client_cpu(fake_url, REST_KEY)
        before = fake_state(fake_url)["stats"]
        t0 = time.perf_counter()
        seed(engine, url=fake_url, n_users=args.users, mode=args.mode, now=time.time())
        print(f"seeded {args.users} dirty users in {time.perf_counter() - t0:.1f}s")
        engine.dispose()

        settings = load_settings(
            environ={},
            overrides={
                "database.url": url,
                "braze.allowed_custom_endpoints": ["http://127.0.0.1:"],
                "delivery.workers": args.workers,
                "log.level": "WARNING",
            },
        )
        sqlite = url.startswith("sqlite")
        runtime = Runtime.from_settings(settings, background_checkpoint=sqlite)
        from audience_sync.delivery.service import start_senders
        from audience_sync.store.checkpoint import WalCheckpointer

        stop = threading.Event()
        if sqlite:  # as `audience-sync worker` does on SQLite
            WalCheckpointer(runtime.engine, stop).start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        pool = start_senders(runtime, stop)
        last = args.users
        while True:
            time.sleep(0.5)
            left = pending(runtime.engine)
            if left == 0:
                break
            if left == last and time.perf_counter() - started > 600:
                raise RuntimeError(f"stalled with {left} pending")
            last = left
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stop.set()
        pool.join(30)
        # Before the fake's state is fetched: its million users would be the peak otherwise.
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        state = fake_state(fake_url)
        stats = {k: (v - before[k] if isinstance(v, int) else v) for k, v in state["stats"].items()}
        full = stats["full_requests"] / max(1, stats["requests"])
        users_per_s = args.users / elapsed
        print(
            json.dumps(
                {
                    "suite": "delivery",
                    "database": runtime.engine.dialect.name,
                    "users": args.users,
                    "workers": args.workers,
                    "mode": args.mode,
                    "seconds": round(elapsed, 2),
                    "users_per_s": round(users_per_s),
                    "loopback_capacity_users_per_s": capacity["users_per_s"],
                    "ratio_to_capacity": round(users_per_s / max(1, capacity["users_per_s"]), 3),
                    "engine_cpu_us_per_user": round(cpu / args.users * 1e6, 1),
                    "client_cpu_us_per_request": client,
                    "requests": stats["requests"],
                    "full_request_ratio": round(full, 4),
                    "datapoints": stats["datapoints"],
                    "violations": stats["violations"],
                    "braze_users": sum(
                        1 for u in state["users"] if not u.startswith(CAPACITY_PREFIX)
                    ),
                    "peak_rss_mb": round(rss_mb, 1),
                },
                indent=2,
            )
        )
    finally:
        fake.kill()
        tmp.cleanup()
    return 0
