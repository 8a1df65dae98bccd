"""Firehose acknowledgement latency (SPEC §10): p99 <= 100 ms for 500-profile membership
requests at a sustained 10,000 profiles/s.

The real app runs under waitress in a child process on a free loopback port, on a fresh SQLite
database (or ``--database-url``). Client threads send pre-encoded requests on an open-loop
schedule (request *i* is due at ``start + i * profiles / rate``), so a slow server shows up as
latency, not as a lower offered rate. Latency is measured from the moment a request was due.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import typing as t
import uuid
from collections.abc import Sequence
from pathlib import Path

import requests

from audience_sync.firehose import testing as ft
from audience_sync.process import GC_THRESHOLD

TOKEN = "bench-firehose-token"
ACCOUNT_ID = 777
USER_POOL = 200_000
AUDIENCES = 20
CHANGES_PER_PROFILE = 3
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    database_url: str,
    port: int,
    threads: int,
    log_level: str,
    gc_threshold: int,
    apply_in_request: bool = False,
) -> None:
    """Child process: migrate, then serve the app under waitress until killed."""
    import gc

    import waitress

    from audience_sync import create_app
    from audience_sync.logs import configure_logging
    from audience_sync.runtime import Runtime
    from audience_sync.settings import load_settings
    from audience_sync.store.migrate import upgrade

    configure_logging(log_level, json_lines=True)
    settings = load_settings(
        environ={},
        overrides={
            "database.url": database_url,
            "firehose.tokens": [TOKEN],
            "server.threads": threads,
            "firehose.apply_in_request": apply_in_request,
        },
    )
    sqlite = database_url.startswith("sqlite")
    runtime = Runtime.from_settings(settings, background_checkpoint=sqlite)
    upgrade(runtime.engine)
    app = create_app(runtime=runtime)
    if sqlite:  # as `audience-sync run`/`serve` do (audience_sync.process.run_all)
        import threading

        from audience_sync.store.checkpoint import WalCheckpointer

        WalCheckpointer(runtime.engine, threading.Event()).start()
    if gc_threshold:
        # As `audience-sync run`/`serve` do (audience_sync.process.tune_gc).
        gc.freeze()
        gc.set_threshold(gc_threshold, 20, 20)
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads)


def _bodies(
    count: int, profiles: int, seed: int, settings: dict[str, str] | None = None
) -> tuple[list[bytes], int]:
    """Pre-encoded membership requests, and the membership changes they carry."""
    rng = random.Random(seed)
    bodies, changes = [], 0
    timestamp_ms = int(time.time() * 1000)
    for n in range(count):
        batch = []
        for _ in range(profiles):
            user = rng.randrange(USER_POOL)
            audiences = [
                ft.audience_change(1000 + a, rng.choice(("add", "add", "delete")))
                for a in rng.sample(range(AUDIENCES), CHANGES_PER_PROFILE)
            ]
            changes += len(audiences)
            batch.append(ft.profile(f"user-{user}", audiences, email=f"user-{user}@example.com"))
        body = ft.membership_request(
            ACCOUNT_ID,
            batch,
            message_id=str(uuid.uuid4()),
            timestamp_ms=timestamp_ms + n,
            settings=settings,
        )
        bodies.append(json.dumps(body).encode())
    return bodies, changes


def _wait_until_up(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run(
    *,
    rate: float,
    duration_s: float,
    profiles: int,
    threads: int,
    server_threads: int,
    database_url: str | None,
    log_level: str = "WARNING",
    gc_threshold: int = 0,
    apply_in_request: bool = False,
) -> dict[str, t.Any]:
    """Run the load and return the measurements."""
    count = max(1, round(rate * duration_s / profiles))
    bodies, changes = _bodies(count, profiles, seed=1)
    warmup, _ = _bodies(5, profiles, seed=2)
    with tempfile.TemporaryDirectory(prefix="audience-sync-bench-") as tmp:
        url_db = database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        port = _free_port()
        context = multiprocessing.get_context("spawn")
        server = context.Process(
            target=_serve,
            args=(url_db, port, server_threads, log_level, gc_threshold, apply_in_request),
            daemon=True,
        )
        server.start()
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(base)
            headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
            with requests.Session() as session:
                for body in warmup:
                    session.post(base + "/firehose", data=body, headers=headers).raise_for_status()
            return _load(base, headers, bodies, changes, rate, profiles, threads)
        finally:
            server.terminate()
            server.join(10)


def _load(
    base: str,
    headers: dict[str, str],
    bodies: list[bytes],
    changes: int,
    rate: float,
    profiles: int,
    threads: int,
) -> dict[str, t.Any]:
    interval = profiles / rate
    latencies: list[float] = []
    service: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(bodies)))
    start = time.perf_counter() + 0.2

    def worker() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                due = start + index * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                try:
                    response = session.post(
                        base + "/firehose", data=bodies[index], headers=headers, timeout=30
                    )
                    ok = response.status_code == 200
                    problem = f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    ok, problem = False, type(exc).__name__
                done = time.perf_counter()
                with lock:
                    if ok:
                        latencies.append(done - due)
                        service.append(done - sent)
                    else:
                        errors.append(problem)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    service.sort()
    sent_profiles = len(latencies) * profiles
    return {
        "requests": len(bodies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "profiles_per_request": profiles,
        "offered_profiles_per_s": rate,
        "elapsed_s": round(elapsed, 2),
        "achieved_profiles_per_s": round(sent_profiles / elapsed),
        "membership_changes_per_s": round(changes * len(latencies) / len(bodies) / elapsed),
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.50) * 1000, 1),
            "p95": round(_percentile(latencies, 0.95) * 1000, 1),
            "p99": round(_percentile(latencies, 0.99) * 1000, 1),
            "max": round(latencies[-1] * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        }
        if latencies
        else {},
        "service_ms_p99": round(_percentile(service, 0.99) * 1000, 1) if service else None,
    }


def main(argv: Sequence[str]) -> int:
    """Parse options, run, print a summary; exit 1 if the p99 target is missed."""
    parser = argparse.ArgumentParser(prog="scripts/bench firehose", description=__doc__)
    parser.add_argument("--rate", type=float, default=10_000, help="profiles per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--profiles", type=int, default=500, help="profiles per request")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--server-threads", type=int, default=8, help="waitress threads")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    parser.add_argument("--log-level", default="WARNING", help="server log level (to stderr)")
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=GC_THRESHOLD,
        help="server: gc.freeze() and gc.set_threshold(N, 20, 20) as `audience-sync run` does "
        "(default %(default)s); 0 keeps CPython's defaults",
    )
    parser.add_argument(
        "--apply-in-request",
        action="store_true",
        help="the request also applies its message to the membership state before answering "
        "(firehose.apply_in_request); by default it only commits it to the journal, which "
        "`run`'s sending process or a `worker` applies (none runs in this bench)",
    )
    args = parser.parse_args(list(argv))
    result = run(
        rate=args.rate,
        duration_s=args.duration,
        profiles=args.profiles,
        threads=args.threads,
        server_threads=args.server_threads,
        database_url=args.database_url,
        log_level=args.log_level,
        gc_threshold=args.gc_threshold,
        apply_in_request=args.apply_in_request,
    )
    latency = result["latency_ms"]
    sys.stdout.write(
        "firehose: {requests} requests of {profiles_per_request} profiles in {elapsed_s} s, "
        "{errors} errors\n"
        "  latency ms  p50 {p50}  p95 {p95}  p99 {p99}  max {max}\n"
        "  achieved    {achieved_profiles_per_s} profiles/s "
        "(offered {offered_profiles_per_s:.0f}), "
        "{membership_changes_per_s} membership changes/s\n".format(**result, **latency)
    )
    sys.stdout.write(json.dumps({"suite": "firehose", **result}) + "\n")
    ok = result["errors"] == 0 and latency.get("p99", float("inf")) <= args.target_p99_ms
    return 0 if ok else 1
