"""A real, local, mParticle-compatible Events API server for integration tests and benchmarks.

``FakeMParticle`` serves ``POST /v2/bulkevents`` on 127.0.0.1 (HTTP/1.1 keep-alive) with HTTP
Basic auth per feed (key:secret), and judges **every received batch with mParticle's own Python
SDK models** (``ApiClient(configuration=Configuration()).deserialize`` into ``Batch``, and each
``custom_event``'s data into ``AppEvent``): a batch the SDK rejects is recorded in ``rejected``
(like mParticle, the bulk endpoint still answers 202; tests assert ``rejected == []``).

One gap of the SDK (0.16.1) is handled explicitly: its ``EventBase.event_type`` enum has no
``uninstall``, which the Events API and Braze's connector use for ``users.behaviors.Uninstall``;
such an event is judged with the SDK's generic ``EventData`` model instead (see
``SDK_MISSING_EVENT_TYPES``).

Like mParticle, a batch whose ``source_request_id`` was seen before is acknowledged and not
recorded again. Faults, seeded: 401 for a set of feed keys (``unauthorized``), 429 with
Retry-After, 5xx, dropped connections (before or after the batches are recorded: the engine then
cannot know whether they landed).

    with FakeMParticle(feeds={"ios-key": "ios-secret"}) as mp:
        ...  # currents.mparticle_url = mp.url
        assert mp.rejected == [] and mp.delivered_twice() == []
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import random
import signal
import sys
import threading
import time
import typing as t
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from mparticle import ApiClient, Configuration
from mparticle.models.app_event import AppEvent

SDK_MISSING_EVENT_TYPES = frozenset({"uninstall"})
"""Event types of the Events API that the SDK's ``EventBase`` enum lacks (judged generically)."""
MAX_BATCHES = 100
MAX_REQUEST_BYTES = 256 * 1024
MAX_BATCH_BYTES = 128 * 1024


class _Raw:
    """What ``ApiClient.deserialize`` reads: an object with ``data``."""

    def __init__(self, value: object) -> None:
        self.data = json.dumps(value)


class SdkJudge:
    """mParticle's Python SDK as the judge of a batch (thread-safe: it keeps no state)."""

    def __init__(self) -> None:
        self.api = ApiClient(configuration=Configuration())

    def __call__(self, batch: object) -> str | None:
        """None when mParticle's SDK accepts the batch, else why not."""
        if not isinstance(batch, dict):
            return "batch is not an object"
        if len(json.dumps(batch, separators=(",", ":")).encode()) >= MAX_BATCH_BYTES:
            return "batch over 128 KB"
        try:
            generic = dict(batch)
            events = generic.pop("events", None)
            if not isinstance(events, list) or not events:
                return "no events"
            model = self.api.deserialize(_Raw(generic), "Batch")
            if model.environment is None:
                return "environment missing"
            if not isinstance(batch.get("source_request_id"), str):
                return "source_request_id missing"
            for event in events:
                event_type = event.get("event_type")
                data = event.get("data")
                if event_type in SDK_MISSING_EVENT_TYPES:
                    self.api.deserialize(_Raw(data), "EventData")
                    continue
                self.api.deserialize(_Raw([event]), "list[EventBase]")
                if event_type == "custom_event":
                    self._app_event(data)
                    attrs = (data or {}).get("custom_attributes") or {}
                    if any(not isinstance(v, str) for v in attrs.values()):
                        return "custom attribute values must be strings"
                if not isinstance(data, dict) or not data.get("source_message_id"):
                    return "source_message_id missing"
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _app_event(self, data: t.Any) -> AppEvent:
        """``AppEvent`` from the SDK, every field through its validating setter (the SDK's
        ``deserialize`` cannot build an AppEvent: its constructor requires ``event_name``)."""
        if not isinstance(data, dict) or not data.get("event_name"):
            raise ValueError("custom_event without event_name")
        instance = AppEvent(event_name=data["event_name"])
        convert = self.api._ApiClient__deserialize  # the SDK's own per-type conversion
        for attr, attr_type in instance.swagger_types.items():
            name = instance.attribute_map[attr]
            if name in data:
                setattr(instance, attr, convert(data[name], attr_type))
        if instance.custom_event_type is None:
            raise ValueError("custom_event without custom_event_type")
        return instance


@dataclass
class Received:
    """One accepted batch, as the assertions need it."""

    feed_key: str
    source_request_id: str
    customerid: str | None
    batch: dict[str, t.Any]
    message_ids: list[str] = field(default_factory=list)


class FakeMParticle:
    """The server; see the module docstring."""

    def __init__(
        self,
        *,
        feeds: dict[str, str],
        seed: int = 7,
        rate_429: float = 0.0,
        rate_5xx: float = 0.0,
        rate_drop: float = 0.0,
        rate_drop_after: float = 0.0,
        retry_after_s: float = 0.2,
        validate: bool = True,
        port: int = 0,
        hang_s: float = 0.0,
    ) -> None:
        self.feeds = dict(feeds)
        self.random = random.Random(seed)
        self.rate_429 = rate_429
        self.rate_5xx = rate_5xx
        self.rate_drop = rate_drop
        self.rate_drop_after = rate_drop_after
        self.retry_after_s = retry_after_s
        self.validate = validate
        # Requests held this long, then dropped unrecorded (a sender killed mid-request).
        self.hang_s = hang_s
        self.hung = 0
        self.unauthorized: set[str] = set()
        # source_request_ids answered with a 400 (mParticle refusing a request outright).
        self.refuse_batches: set[str] = set()
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.seen_request_ids: set[str] = set()
        self.rejected: list[tuple[str, str]] = []
        self.duplicate_batches = 0
        # Kept as batches arrive, so that /_state is cheap while a benchmark polls it.
        self.event_count = 0
        self.events_seen: set[str] = set()
        self.twice = 0
        self.statuses: Counter[int | str] = Counter()
        self.requests = 0
        self.batches_per_request: list[int] = []
        self.judge = SdkJudge()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeMParticle:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def configure(self, **settings: t.Any) -> None:
        """Change fault settings while running."""
        with self.lock:
            for key, value in settings.items():
                if not hasattr(self, key):
                    raise AttributeError(key)
                setattr(self, key, value)

    def state(self) -> dict[str, t.Any]:
        """Counts for a process outside this one (``GET /_state``)."""
        with self.lock:
            return {
                "requests": self.requests,
                "batches": len(self.received),
                "events": self.event_count,
                "distinct_events": len(self.events_seen),
                "delivered_twice": self.twice,
                "duplicate_batches": self.duplicate_batches,
                "rejected": len(self.rejected),
                "statuses": {str(k): v for k, v in self.statuses.items()},
            }

    # -- assertions ----------------------------------------------------------------------------

    def message_ids(self) -> Counter[str]:
        """How many accepted batches carried each ``source_message_id``."""
        with self.lock:
            return Counter(m for r in self.received for m in r.message_ids)

    def delivered_twice(self) -> list[str]:
        """``source_message_id``s that arrived in more than one distinct batch."""
        return sorted(m for m, n in self.message_ids().items() if n > 1)

    def order_by_user(self) -> dict[str | None, list[str]]:
        """Per customer id, the message ids in the order they were accepted."""
        out: dict[str | None, list[str]] = defaultdict(list)
        with self.lock:
            for r in self.received:
                out[r.customerid].extend(r.message_ids)
        return dict(out)

    def events_of(self, feed_key: str) -> list[tuple[dict[str, t.Any], dict[str, t.Any]]]:
        """(batch, event) pairs received on one feed."""
        with self.lock:
            return [
                (r.batch, e)
                for r in self.received
                if r.feed_key == feed_key
                for e in r.batch.get("events", [])
            ]

    # -- HTTP ----------------------------------------------------------------------------------

    def _feed_of(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            key, _, secret = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if self.feeds.get(key) != secret or not secret:
            return None
        return key

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY the second waits for
            # the client's delayed ACK (~40 ms per request on loopback).
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, status: int, body: object, headers: dict[str, str] | None = None):
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                if self.path != "/_state":
                    with fake.lock:
                        fake.statuses[status] += 1

            def _drop(self) -> None:
                with fake.lock:
                    fake.statuses["drop"] += 1
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

            def do_GET(self) -> None:
                if self.path == "/_state":
                    return self._answer(200, fake.state())
                return self._answer(404, {"errors": [{"message": "not found"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with fake.lock:
                    fake.requests += 1
                if self.path != "/v2/bulkevents":
                    return self._answer(404, {"errors": [{"message": "not found"}]})
                key = fake._feed_of(self.headers.get("Authorization", ""))
                if key is None or key in fake.unauthorized:
                    return self._answer(401, {"errors": [{"message": "Unauthorized"}]})
                if fake.hang_s:
                    with fake.lock:
                        fake.hung += 1
                    time.sleep(fake.hang_s)
                    return self._drop()
                with fake.lock:
                    roll = fake.random.random()
                    r429, r5xx, rdrop = fake.rate_429, fake.rate_5xx, fake.rate_drop
                    rafter = fake.random.random() < fake.rate_drop_after
                if roll < r429:
                    return self._answer(
                        429,
                        {"errors": [{"message": "Too many requests"}]},
                        {"Retry-After": str(fake.retry_after_s)},
                    )
                if roll < r429 + r5xx:
                    return self._answer(503, {"errors": [{"message": "unavailable"}]})
                if roll < r429 + r5xx + rdrop:
                    return self._drop()
                if length >= MAX_REQUEST_BYTES:
                    return self._answer(413, {"errors": [{"message": "too large"}]})
                try:
                    batches = orjson.loads(body)
                except ValueError:
                    return self._answer(400, {"errors": [{"message": "invalid JSON"}]})
                if not isinstance(batches, list) or not 0 < len(batches) <= MAX_BATCHES:
                    return self._answer(400, {"errors": [{"message": "1 to 100 batches"}]})
                refused = [
                    b.get("source_request_id")
                    for b in batches
                    if isinstance(b, dict) and b.get("source_request_id") in fake.refuse_batches
                ]
                if refused:
                    message = f"batch {refused[0]}: invalid schema"
                    return self._answer(400, {"errors": [{"message": message}]})
                # Judged outside the lock (the SDK is slow); recorded under one lock per request.
                problems = [fake.judge(b) if fake.validate else None for b in batches]
                with fake.lock:
                    fake.batches_per_request.append(len(batches))
                    seen, events_seen = fake.seen_request_ids, fake.events_seen
                    for batch, problem in zip(batches, problems, strict=True):
                        request_id = (
                            batch.get("source_request_id") if isinstance(batch, dict) else None
                        )
                        if problem is not None:
                            fake.rejected.append((str(request_id), problem))
                            continue
                        if request_id in seen:
                            fake.duplicate_batches += 1
                            continue
                        seen.add(request_id)
                        identities = batch.get("user_identities") or {}
                        message_ids = [e["data"]["source_message_id"] for e in batch["events"]]
                        fake.received.append(
                            Received(
                                feed_key=key,
                                source_request_id=request_id,
                                customerid=identities.get("customerid"),
                                batch=batch,
                                message_ids=message_ids,
                            )
                        )
                        fake.event_count += len(message_ids)
                        before = len(events_seen)
                        events_seen.update(message_ids)
                        fake.twice += len(message_ids) - (len(events_seen) - before)
                if rafter:
                    return self._drop()
                return self._answer(202, {})

        return Handler


def wait_for(predicate: t.Callable[[], bool], *, timeout_s: float = 30.0) -> None:
    """Poll ``predicate`` until true (or fail after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    """Run a FakeMParticle until SIGTERM (prints its URL; ``GET /_state`` gives the counts)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.mparticle_server")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--feed", action="append", default=[], help="key:secret, repeatable")
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-5xx", type=float, default=0.0)
    parser.add_argument("--rate-drop", type=float, default=0.0)
    parser.add_argument("--rate-drop-after", type=float, default=0.0)
    parser.add_argument("--retry-after-s", type=float, default=0.2)
    parser.add_argument("--no-validate", action="store_true", help="skip the SDK judge")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    # A process of its own (the benchmark's): it keeps every batch it accepted (plain dicts, no
    # cycles), and the collector's passes over them cost more than the requests once the
    # capacity measurement left ~100,000 events behind (18-20 -> 33-34 us of CPU per batch).
    gc.disable()
    feeds = dict(f.split(":", 1) for f in args.feed)
    fake = FakeMParticle(
        feeds=feeds,
        seed=args.seed,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_drop=args.rate_drop,
        rate_drop_after=args.rate_drop_after,
        retry_after_s=args.retry_after_s,
        validate=not args.no_validate,
        port=args.port,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with fake:
        print(fake.url, flush=True)
        try:
            while not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
