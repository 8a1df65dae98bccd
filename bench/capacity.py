"""The loopback capacity of the local Braze server, and the HTTP client's CPU per request, both
measured in the run that uses them (the machine is shared: absolute figures drift, ratios from
one run do not).

- :func:`loopback_capacity`: users/s a bare ``urllib3`` pool reaches against the fake Braze
  with full 75-object requests from ``threads`` threads; the ceiling a sender could reach.
- :func:`client_cpu`: CPU µs per 75-object request of :class:`~audience_sync.braze.client.
  BrazeClient` (``requests``) beside a bare ``urllib3`` pool, one thread each, measured with
  ``time.thread_time`` so the server's work (another process) is not counted.

Capacity requests use their own user ids (``capacity-*``): callers subtract them.
"""

from __future__ import annotations

import threading
import time
import typing as t
from urllib.parse import urlsplit

import orjson
import urllib3

from audience_sync.braze.client import BrazeClient

OBJECTS = 75
CAPACITY_PREFIX = "capacity-"


def _body(start: int) -> bytes:
    return orjson.dumps(
        {
            "attributes": [
                {
                    # The shape and size of the bench's own objects (three audiences).
                    "external_id": f"{CAPACITY_PREFIX}{start + i}",
                    "audiences": {"add": ["Bench One", "Bench Two", "Bench Three"]},
                    "audiences_string": "Bench One;Bench Three;Bench Two",
                    "audience_bench_one": True,
                    "audience_bench_two": True,
                    "audience_bench_three": True,
                }
                for i in range(OBJECTS)
            ]
        }
    )


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def loopback_capacity(url: str, key: str, *, threads: int = 2, seconds: float = 2.0) -> dict:
    """Users/s of full requests a bare urllib3 pool gets through the fake Braze."""
    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=threads, retries=False)
    bodies = [_body(i * OBJECTS) for i in range(50)]
    done = [0] * threads
    stop_at = time.perf_counter() + seconds

    def worker(n: int) -> None:
        headers = _headers(key)
        i = 0
        while time.perf_counter() < stop_at:
            response = pool.urlopen(
                "POST", "/users/track", body=bodies[i % len(bodies)], headers=headers
            )
            if response.status < 300:
                done[n] += 1
            i += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    pool.close()
    return {
        "threads": threads,
        "requests_per_s": round(sum(done) / elapsed),
        "users_per_s": round(sum(done) * OBJECTS / elapsed),
    }


def client_cpu(url: str, key: str, *, requests_n: int = 200) -> dict[str, t.Any]:
    """CPU µs per 75-object request: the Braze client (requests) and a bare urllib3 pool."""
    body = _body(0)
    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=1, retries=False)
    headers = _headers(key)

    def bare() -> None:
        pool.urlopen("POST", "/users/track", body=body, headers=headers).data  # noqa: B018

    client = BrazeClient(timeout_s=10, pool_maxsize=1)

    def ours() -> None:
        client.track(url, key, body)

    result = {}
    for name, call in (("urllib3", bare), ("braze_client", ours)):
        for _ in range(10):  # warm the pool
            call()
        started = time.thread_time()
        for _ in range(requests_n):
            call()
        result[f"{name}_cpu_us"] = round((time.thread_time() - started) / requests_n * 1e6)
    client.close()
    pool.close()
    result["ratio"] = round(result["braze_client_cpu_us"] / max(1, result["urllib3_cpu_us"]), 2)
    return result
