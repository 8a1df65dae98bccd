"""Currents benchmark (SPEC §10: ≥ 20,000 events/s from Avro files to mParticle batches).

    scripts/bench currents [--events 200000] [--users 40000] [--files 40] [--validate]
                           [--database-url URL] [--faults]

Writes Braze-shaped Avro files (snappy), starts the local mParticle-compatible server in its
own process, measures its capacity (batches/s and events/s a client can get accepted), then runs
the engine as an operator would, ``audience-sync currents import`` beside ``audience-sync
worker`` (started first and ready, as deployed: its start-up is not counted), and times from
the start of the import until the server has accepted every event.
``--faults`` adds 429s, 5xx and dropped connections at the server, SIGKILLs the worker twice,
and checks that every event arrived exactly once. ``--validate`` lets the server judge every
batch with mParticle's SDK (slower server; the test suite always does).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

import fastavro
import orjson
import requests

from audience_sync.settings import load_settings
from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests/fixtures/braze-currents/sample-data/Avro/users.messages.email.Open.avro"
FEED_KEY, FEED_SECRET = "bench-key", "bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.mparticle_server",
            "--port",
            str(port),
            "--feed",
            f"{FEED_KEY}:{FEED_SECRET}",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            state(url)
            return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("fake mParticle did not start")


def state(url: str) -> dict:
    with urllib.request.urlopen(url + "/_state", timeout=60) as response:
        return json.loads(response.read())


def write_files(folder: Path, *, events: int, users: int, files: int) -> None:
    """Email Opens (the sample's record), fresh ids, users spread over the files."""
    with SAMPLE.open("rb") as fh:
        reader = fastavro.reader(fh)
        schema = fastavro.parse_schema(reader.writer_schema)
        base = next(iter(reader))
    per_file = events // files
    n = 0
    for f in range(files):
        records = []
        for _ in range(per_file):
            record = dict(base)
            record["id"] = str(uuid.uuid4())
            record["external_user_id"] = f"user-{n % users}"
            record["time"] = 1_764_000_000 + n
            records.append(record)
            n += 1
        path = folder / "event_type=users.messages.email.Open" / f"date=2026-12-01-{f % 24:02d}"
        path.mkdir(parents=True, exist_ok=True)
        with (path / f"part-{f:04d}.avro").open("wb") as fh:
            fastavro.writer(fh, schema, records, codec="snappy")


def server_capacity(url: str, *, seconds: float = 3.0, threads: int = 2) -> dict:
    """Batches/s and events/s the server accepts from a plain pooled client (4 events/batch)."""

    def batch(i: int) -> dict:
        return {
            "schema_version": 2,
            "environment": "production",
            "source_request_id": str(uuid.uuid4()),
            "user_identities": {"customerid": f"cap-{i}"},
            "device_info": {},
            "user_attributes": {},
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {
                        "event_name": "Email Opens",
                        "custom_event_type": "other",
                        "timestamp_unixtime_ms": 1,
                        "source_message_id": str(uuid.uuid4()),
                        "custom_attributes": {"campaign_id": "c", "dispatch_id": "d"},
                    },
                }
                for _ in range(4)
            ],
        }

    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            body = orjson.dumps([batch(i) for i in range(100)])
            r = session.post(
                url + "/v2/bulkevents",
                data=body,
                auth=(FEED_KEY, FEED_SECRET),
                headers={"Content-Type": "application/json"},
            )
            if r.status_code == 202:
                counts[k] += 100

    started = time.monotonic()
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - started
    return {
        "batches_per_s": round(sum(counts) / elapsed),
        "events_per_s": round(4 * sum(counts) / elapsed),
    }


def config_file(folder: Path, database_url: str, url: str) -> Path:
    path = folder / "bench.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[currents]
mparticle_url = "{url}"
allowed_mparticle_urls = ["http://127.0.0.1:"]
batches_per_second = 1000000
[currents.feeds.unbound]
key = "{FEED_KEY}"
secret = "{FEED_SECRET}"
platform = "unbound"
[delivery]
backoff_base_s = 0.05
backoff_cap_s = 0.5
max_attempts = 1000
poll_interval_s = 0.2
[log]
level = "WARNING"
"""
    )
    return path


_RUSAGE: dict[int, float] = {}


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Reap ``proc`` if it has exited, keeping its CPU time (user + system)."""
    if proc.pid in _RUSAGE:
        return True
    pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return False
    _RUSAGE[proc.pid] = usage.ru_utime + usage.ru_stime
    proc.returncode = 0
    return True


def _cpu_of(proc: subprocess.Popen[bytes]) -> float:
    """Wait for ``proc`` and return its CPU seconds."""
    if proc.pid not in _RUSAGE:
        _pid, _status, usage = os.wait4(proc.pid, 0)
        _RUSAGE[proc.pid] = usage.ru_utime + usage.ru_stime
        proc.returncode = 0
    return _RUSAGE[proc.pid]


def _running_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_registered(worker: subprocess.Popen[bytes], database_url: str) -> float:
    """Wait until ``worker`` has registered in the worker registry (it is then ready to send);
    returns its CPU seconds so far."""
    engine = create_engine(database_url)
    deadline = time.monotonic() + 60
    try:
        while True:
            with engine.connect() as conn:
                if conn.exec_driver_sql("SELECT COUNT(*) FROM workers").scalar_one():
                    break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start")
            time.sleep(0.05)
    finally:
        engine.dispose()
    time.sleep(0.2)  # past registration: the first claim
    return _running_cpu_s(worker.pid)


def spawn(config: Path, folder: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    log = (folder / f"{args[0]}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "--config", str(config), *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench currents")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--validate", action="store_true")
    parser.add_argument("--faults", action="store_true")
    args, _ = parser.parse_known_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-currents-") as tmp:
        folder = Path(tmp)
        write_files(folder / "inbox", events=args.events, users=args.users, files=args.files)
        extra = [] if args.validate else ["--no-validate"]
        if args.faults:
            extra += [
                "--rate-429",
                "0.1",
                "--rate-5xx",
                "0.05",
                "--rate-drop",
                "0.02",
                "--rate-drop-after",
                "0.02",
                "--retry-after-s",
                "0.1",
            ]
        server, url = start_server(extra)
        try:
            capacity = server_capacity(url) if not args.faults else None
            initial = state(url)
            before = initial["events"]
            server_cpu_before = _running_cpu_s(server.pid)
            database_url = args.database_url or f"sqlite:///{folder}/bench.db"
            engine = create_engine(database_url)
            upgrade(engine)
            engine.dispose()
            config = config_file(folder, database_url, url)
            load_settings(config)  # fail early on a bad config
            # The worker runs already, as deployed: its start-up (imports, registration) is
            # not part of the import's time or CPU.
            worker = spawn(config, folder, "worker")
            worker_cpu_before = _wait_registered(worker, database_url)
            started = time.monotonic()
            importer = spawn(config, folder, "currents", "import", str(folder / "inbox"))
            kills = 0
            import_s = None
            deadline = time.monotonic() + 600
            while state(url)["events"] - before < args.events:
                if time.monotonic() > deadline:
                    raise RuntimeError("not every event arrived within 10 minutes")
                if import_s is None and _exited(importer):
                    import_s = time.monotonic() - started
                if args.faults and kills < 2 and time.monotonic() - started > 2 + 2 * kills:
                    worker.send_signal(signal.SIGKILL)
                    worker.wait()
                    worker = spawn(config, folder, "worker")
                    kills += 1
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            if import_s is None:
                _cpu_of(importer)
                import_s = time.monotonic() - started
            final = state(url)
            server_cpu_s = _running_cpu_s(server.pid) - server_cpu_before
            worker.send_signal(signal.SIGTERM)
            import_cpu_s = _cpu_of(importer)
            cpu_s = import_cpu_s + _cpu_of(worker) - worker_cpu_before
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    delivered = final["events"] - before
    result = {
        "suite": "currents",
        "events": args.events,
        "users": args.users,
        "files": args.files,
        "server_validates_with_sdk": args.validate,
        "seconds": round(elapsed, 2),
        "import_seconds": round(import_s, 2),
        "events_per_s": round(delivered / elapsed),
        "import_events_per_s": round(args.events / import_s),
        "engine_cpu_us_per_event": round(1e6 * cpu_s / args.events, 1),
        "import_cpu_us_per_event": round(1e6 * import_cpu_s / args.events, 1),
        # The local mParticle server's CPU in the same run (it shares the machine's cores).
        "server_cpu_us_per_event": round(1e6 * server_cpu_s / args.events, 1),
        "batches": final["batches"] - initial["batches"],
        "events_per_batch": round(delivered / max(1, final["batches"] - initial["batches"]), 2),
        "requests": final["requests"] - initial["requests"],
        "delivered_twice": final["delivered_twice"],
        "rejected": final["rejected"],
        "target_events_per_s": 20_000,
    }
    if capacity:
        result["server_capacity"] = capacity
        result["ratio_to_server_events_per_s"] = round(
            result["events_per_s"] / capacity["events_per_s"], 3
        )
    if args.faults:
        result["faults"] = {"statuses": final["statuses"], "worker_sigkills": kills}
    print(json.dumps(result, indent=2))
    ok = final["delivered_twice"] == 0 and final["rejected"] == 0 and delivered == args.events
    return 0 if ok else 1
