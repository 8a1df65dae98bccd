"""A real, local, Braze-compatible HTTP server for integration tests and benchmarks.

``FakeBraze`` serves ``POST /users/track`` and ``POST /users/export/ids`` on 127.0.0.1 over
HTTP/1.1 keep-alive, applies attribute writes with Braze semantics to ``users``, answers in
Braze's shapes with ``x-ratelimit-*`` headers, injects faults from a seeded ``random.Random``,
and records what an assertion needs: requests, objects per request, sizes, data points (SPEC
§4.5), a requests-per-second timeline, and **concurrency violations** (two requests in flight
carrying the same ``external_id``, which SPEC §5.4 forbids).

In-process::

    with FakeBraze(api_keys={"k"}, rate_429=0.1) as braze:
        ...  # point the engine at braze.url
        braze.configure(rate_429=0.0)
        assert braze.violations == []

Standalone (prints its URL, serves until killed; ``GET /_state`` returns users and stats,
``POST /_faults`` with a JSON object changes fault settings)::

    python -m tests.fakes.braze_server --port 0 --api-key k --rate-429 0.1 --rate-5xx 0.05

Recorded answers: ``braze.answer_next(Canned(status=201, body={...}))`` queues answers returned
verbatim to the next ``/users/track`` requests (objects no indexed error names are applied, as
Braze does); ``object_error`` refuses chosen objects on every request (say, one malformed email),
and ``received_objects`` keeps every attribute object received, in order.

Answer shapes follow https://www.braze.com/docs/api/errors/ and
https://www.braze.com/docs/api/endpoints/user_data/post_user_track/.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import signal
import socket
import sys
import threading
import time
import typing as t
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MAX_OBJECTS = 75
MAX_BYTES = 4_000_000
MAX_EXTERNAL_ID_BYTES = 987
MAX_STRING_CHARS = 255
MAX_EXPORT_IDS = 50

# Error ``type`` strings as Braze words them (see the module docstring for sources).
ERROR_IDENTIFIER_REQUIRED = (
    "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
)
ERROR_BLACKLISTED = "provided external_id is blacklisted and disallowed"
ERROR_EXTERNAL_ID_TOO_LARGE = "EXTERNAL_USER_ID_TOO_LARGE"
ERROR_RETRYABLE = "'attributes' object could not be processed, please retry"
ERROR_NOT_AN_OBJECT = "'attributes' entries must be objects"

_NOT_COUNTED = frozenset({"external_id", "_update_existing_only", "push_tokens"})
_ARRAY_OPS = frozenset({"add", "remove"})
_DROP = object()

FAULT_FIELDS = (
    "rate_429",
    "rate_5xx",
    "rate_5xx_after_apply",
    "rate_drop",
    "rate_drop_after_apply",
    "rate_item_error",
    "blacklisted_ids",
    "auth_fail",
    "delay_s",
    "enforce_rate_limit",
    "object_error",
    "export_429_next",
)


def is_array_operation(value: t.Any) -> bool:
    """``{"add": [...], "remove": [...]}`` (either or both) on an array attribute."""
    if type(value) is not dict or not value:
        return False
    for op, values in value.items():
        if op not in _ARRAY_OPS or type(values) is not list:
            return False
    return True


def _points(key: str, value: t.Any) -> int:
    if key in _NOT_COUNTED:
        return 0
    if is_array_operation(value):
        return sum(len(v) for v in value.values())
    return 1


def datapoints_of(obj: Mapping[str, t.Any]) -> int:
    """Data points one applied attribute object costs (SPEC §4.5, Braze's published rules).

    Each custom attribute key written is 1 (``null`` too); an array ``add``/``remove`` is 1 per
    value; a whole array is 1; ``email`` is 1; ``push_tokens``, ``external_id`` and
    ``_update_existing_only`` are 0.
    """
    return sum(_points(key, value) for key, value in obj.items())


def apply_attributes(
    user: dict[str, t.Any],
    obj: Mapping[str, t.Any],
    *,
    array_max_length: int,
    points: Counter[str] | None = None,
    notes: Counter[str] | None = None,
) -> int:
    """Apply one attribute object to a stored profile with Braze semantics; return its points.

    ``null`` removes the attribute; ``{"add", "remove"}`` adds missing values (no duplicates)
    then removes values; strings over 255 characters are truncated and arrays over
    ``array_max_length`` lose their oldest values, as Braze does (both counted in ``notes``, so
    tests can prove the engine's guards keep this from happening). Data points per attribute
    name are added to ``points``.
    """
    total = 0
    for key, value in obj.items():
        if key == "external_id" or key == "_update_existing_only":
            continue
        if key == "push_tokens":
            tokens = user.setdefault("push_tokens", [])
            for token in value or []:
                if token not in tokens:
                    tokens.append(token)
            continue
        cost = 1
        if value is None:
            user.pop(key, None)
        else:
            if is_array_operation(value):
                added = value.get("add", [])
                removed = value.get("remove", [])
                cost = len(added) + len(removed)
                current = user.get(key)
                array = list(current) if type(current) is list else []
                for item in added:
                    if item not in array:
                        array.append(item)
                value = [item for item in array if item not in removed] if removed else array
            if type(value) is str and len(value) > MAX_STRING_CHARS and key != "email":
                value = value[:MAX_STRING_CHARS]
                if notes is not None:
                    notes["strings_truncated"] += 1
            elif type(value) is list and len(value) > array_max_length:
                value = value[-array_max_length:]
                if notes is not None:
                    notes["arrays_truncated"] += 1
            user[key] = value
        total += cost
        if points is not None:
            points[key] += cost
    return total


@dataclass(frozen=True, kw_only=True)
class Canned:
    """One recorded answer for the next ``/users/track`` request.

    Attributes:
        status: HTTP status to answer.
        body: a JSON value, or ``bytes`` sent verbatim (empty, or not JSON).
        headers: extra response headers.
        apply: which objects of the request the fake applies: ``"unnamed"`` (a 2xx applies every
            object no indexed ``attributes`` error names; other statuses apply nothing),
            ``"none"`` or ``"all"``.
    """

    status: int
    body: t.Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    apply: str = "unnamed"

    def named_indices(self) -> set[int]:
        """Positions an indexed error of ``attributes`` names (a missing array means it)."""
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        named: set[int] = set()
        for entry in errors if isinstance(errors, list) else ():
            if not isinstance(entry, dict) or entry.get("input_array", "attributes") not in (
                "attributes",
                None,
            ):
                continue
            index = entry.get("index")
            if isinstance(index, str) and index.strip().isdigit():
                index = int(index)
            if isinstance(index, int) and not isinstance(index, bool):
                named.add(index)
        return named

    def applies(self, index: int) -> bool:
        """Whether the object at ``index`` is applied when this answer is given."""
        if self.apply == "all":
            return True
        if self.apply == "none" or not 200 <= self.status < 300:
            return False
        return index not in self.named_indices()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256
    fake: FakeBraze


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: t.Any) -> None:
        """Silence the per-request stderr line."""

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in one write, and without Nagle's delay: otherwise every
        # answer waits ~40 ms for the client's delayed ACK, which would cap a benchmark.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._connection_closed(self.connection)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self) -> None:
        raw = self._read_body()
        path = urlsplit(self.path).path
        fake = self.server.fake
        if path == "/users/track":
            answer = fake._handle_track(self.headers, raw)
        elif path == "/users/export/ids":
            answer = fake._handle_export(self.headers, raw)
        elif path == "/_faults":
            answer = fake._handle_faults(raw)
        else:
            answer = (404, {"message": "Not Found"}, {})
        self._answer(answer)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_state":
            self._answer((200, self.server.fake.state(), {}))
        else:
            self._answer((404, {"message": "Not Found"}, {}))

    def _answer(self, answer: t.Any) -> None:
        if answer is _DROP:
            # Close without a byte of response, as a dying proxy or server would.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        status, body, headers = answer
        if isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        # end_headers() would send the headers alone; append the body to the same write.
        self._headers_buffer.append(b"\r\n" + data)
        self.flush_headers()


class FakeBraze:
    """A Braze-compatible ``/users/track`` server on 127.0.0.1 with fault injection.

    Args:
        api_keys: REST keys accepted (``Authorization: Bearer <key>``); ``None`` accepts any.
        max_objects: more objects in one request get 400 ``Max Input Length Exceeded``.
        max_bytes: bodies of this size or more get 413.
        rate_429: share of requests answered 429 (``X-Ratelimit-Retry-After: 1``), nothing
            applied.
        rate_5xx: share answered 500/502/503, nothing applied.
        rate_5xx_after_apply: share applied, then answered 500.
        rate_drop: share whose connection is closed without an answer, nothing applied.
        rate_drop_after_apply: share applied, then closed without an answer.
        rate_item_error: share of requests in which one random object gets a retryable error
            and is not applied.
        blacklisted_ids: external ids refused with Braze's permanent blacklist error.
        auth_fail: answer every request 401.
        delay_s: hold each ``/users/track`` request this long while it is in flight.
        seed: seed of the fault ``random.Random``.
        ratelimit_limit, ratelimit_window_s: the window reported in ``x-ratelimit-*`` headers
            (Braze default: 3,000 per 3 s) and enforced with 429 if ``enforce_rate_limit``.
        reset_as_epoch: send ``x-ratelimit-reset`` as an epoch second instead of seconds left.
        array_max_length: Braze workspace array limit.
        object_error: called with every attribute object; an ``errors`` entry it returns
            (``{"type": ...}``, optionally with ``input_array``) refuses that object, which is
            not applied, and is answered with the entry plus the object's ``index``.
        port: 0 picks a free port.

    Fault settings can be changed while running with :meth:`configure` (or ``POST /_faults``).
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] | None = None,
        max_objects: int = MAX_OBJECTS,
        max_bytes: int = MAX_BYTES,
        rate_429: float = 0.0,
        rate_5xx: float = 0.0,
        rate_5xx_after_apply: float = 0.0,
        rate_drop: float = 0.0,
        rate_drop_after_apply: float = 0.0,
        rate_item_error: float = 0.0,
        blacklisted_ids: Iterable[str] = (),
        auth_fail: bool = False,
        delay_s: float = 0.0,
        seed: int = 0,
        ratelimit_limit: int = 3000,
        ratelimit_window_s: float = 3.0,
        enforce_rate_limit: bool = False,
        reset_as_epoch: bool = False,
        array_max_length: int = 500,
        object_error: Callable[[Mapping[str, t.Any]], Mapping[str, t.Any] | None] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_keys = None if api_keys is None else frozenset(api_keys)
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self.rate_429 = rate_429
        self.rate_5xx = rate_5xx
        self.rate_5xx_after_apply = rate_5xx_after_apply
        self.rate_drop = rate_drop
        self.rate_drop_after_apply = rate_drop_after_apply
        self.rate_item_error = rate_item_error
        self.blacklisted_ids = frozenset(blacklisted_ids)
        self.auth_fail = auth_fail
        self.delay_s = delay_s
        self.ratelimit_limit = ratelimit_limit
        self.ratelimit_window_s = ratelimit_window_s
        self.enforce_rate_limit = enforce_rate_limit
        self.reset_as_epoch = reset_as_epoch
        self.array_max_length = array_max_length
        self.object_error = object_error
        self._canned: deque[Canned] = deque()
        self.host = host
        self.port = port

        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.users: dict[str, dict[str, t.Any]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, count)
        self._in_flight: Counter[str] = Counter()
        self.export_429_next = 0  # answer this many next exports 429 (Retry-After: 1)
        self.export_requests = 0
        self.export_ids_requested: list[int] = []  # ids per /users/export/ids request
        self.reset_stats()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> FakeBraze:
        """Start serving in a daemon thread; ``url`` is valid afterwards."""
        server = _Server((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeBraze:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    def _connection_opened(self, conn: socket.socket) -> None:
        with self.lock:
            self._connections.add(conn)

    def _connection_closed(self, conn: socket.socket) -> None:
        with self.lock:
            self._connections.discard(conn)

    # -- configuration and recording -----------------------------------------------------

    def configure(self, **changes: t.Any) -> None:
        """Change fault settings at run time (names of :data:`FAULT_FIELDS`)."""
        unknown = set(changes) - set(FAULT_FIELDS)
        if unknown:
            raise TypeError(f"unknown fault settings: {sorted(unknown)}")
        with self.lock:
            for name, value in changes.items():
                if name == "blacklisted_ids":
                    value = frozenset(value)
                setattr(self, name, value)

    def answer_next(self, *answers: Canned) -> None:
        """Queue recorded answers for the next ``/users/track`` requests, in order."""
        with self.lock:
            self._canned.extend(answers)

    @property
    def canned_left(self) -> int:
        """Queued answers not given yet."""
        with self.lock:
            return len(self._canned)

    def reset_stats(self) -> None:
        """Forget recorded requests, data points and violations (``users`` are kept)."""
        with self.lock:
            self.requests = 0
            self.objects_per_request: list[int] = []
            self.request_sizes: list[int] = []
            self.datapoints = 0
            self.datapoints_by_key: Counter[str] = Counter()
            self.timeline: Counter[int] = Counter()  # epoch second -> /users/track requests
            self.request_times: list[float] = []  # monotonic arrival times
            self.status_counts: Counter[str] = Counter()
            self.notes: Counter[str] = Counter()
            self.violations: list[dict[str, t.Any]] = []
            self.received_objects: list[t.Any] = []  # every attribute object, in order
            self.max_in_flight = 0
            self._requests_in_flight = 0

    def max_requests_in_window(self, window_s: float = 1.0) -> int:
        """Most ``/users/track`` requests that arrived within any ``window_s`` seconds."""
        with self.lock:
            times = list(self.request_times)
        best = 0
        for i, start in enumerate(times):
            best = max(best, bisect.bisect_left(times, start + window_s, lo=i) - i)
        return best

    def stats(self) -> dict[str, t.Any]:
        """Recorded numbers as plain JSON-able values."""
        with self.lock:
            full = sum(1 for n in self.objects_per_request if n >= self.max_objects)
            return {
                "requests": self.requests,
                "objects_per_request": list(self.objects_per_request),
                "full_requests": full,
                "request_sizes": list(self.request_sizes),
                "datapoints": self.datapoints,
                "datapoints_by_key": dict(self.datapoints_by_key),
                "timeline": {str(k): v for k, v in sorted(self.timeline.items())},
                "status_counts": dict(self.status_counts),
                "notes": dict(self.notes),
                "max_in_flight": self.max_in_flight,
                "violations": len(self.violations),
            }

    def state(self) -> dict[str, t.Any]:
        """Users, stats and violations (what ``GET /_state`` answers)."""
        stats = self.stats()
        stats["max_requests_in_1s"] = self.max_requests_in_window(1.0)
        with self.lock:
            return {
                "url": self.url,
                "users": json.loads(json.dumps(self.users)),
                "stats": stats,
                "violations": list(self.violations),
            }

    # -- request handling ----------------------------------------------------------------

    def _authorized(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        if self.auth_fail or scheme.lower() != "bearer" or not key.strip():
            return None
        key = key.strip()
        if self.api_keys is not None and key not in self.api_keys:
            return None
        return key

    def _ratelimit(self, key: str, now: float) -> tuple[dict[str, str], bool]:
        """Count one request in the key's fixed window; return headers and whether over."""
        window = self.ratelimit_window_s
        start = math.floor(now / window) * window
        previous = self._windows.get(key)
        count = previous[1] + 1 if previous and previous[0] == start else 1
        self._windows[key] = (start, count)
        end = start + window
        reset = str(math.ceil(end)) if self.reset_as_epoch else str(math.ceil(end - now))
        headers = {
            "X-RateLimit-Limit": str(self.ratelimit_limit),
            "X-RateLimit-Remaining": str(max(0, self.ratelimit_limit - count)),
            "X-RateLimit-Reset": reset,
        }
        return headers, count > self.ratelimit_limit

    def _finish(self, status: int, body: t.Any, headers: dict[str, str] | None = None) -> t.Any:
        with self.lock:
            self.status_counts[str(status)] += 1
        return status, body, headers or {}

    def _dropped(self, label: str) -> t.Any:
        with self.lock:
            self.status_counts[label] += 1
        return _DROP

    def _handle_track(self, headers: Mapping[str, str], raw: bytes) -> t.Any:
        now = time.time()
        with self.lock:
            self.requests += 1
            self.request_sizes.append(len(raw))
            self.timeline[int(now)] += 1
            self.request_times.append(time.monotonic())
        key = self._authorized(headers)
        if key is None:
            return self._finish(401, {"message": "Invalid API key"})
        with self.lock:
            rl_headers, over_limit = self._ratelimit(key, now)
        if len(raw) >= self.max_bytes:
            return self._finish(413, {"message": "Payload Too Large"}, rl_headers)
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return self._finish(415, {"message": "Unsupported Media Type"}, rl_headers)
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._finish(400, {"message": "Bad Request"}, rl_headers)
        if not isinstance(payload, dict):
            return self._finish(400, {"message": "Bad Request"}, rl_headers)
        attributes = payload.get("attributes") or []
        if not isinstance(attributes, list):
            return self._finish(400, {"message": "Bad Request"}, rl_headers)
        others = len(payload.get("events") or []) + len(payload.get("purchases") or [])
        with self.lock:
            self.objects_per_request.append(len(attributes))
            self.received_objects.extend(json.loads(json.dumps(attributes)))
        if not attributes and not others:
            message = (
                "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
            )
            return self._finish(400, {"message": message}, rl_headers)

        external_ids = [
            obj["external_id"]
            for obj in attributes
            if isinstance(obj, dict) and isinstance(obj.get("external_id"), str)
        ]
        self._enter(external_ids, now)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            answer = self._track_in_flight(attributes, others, rl_headers, over_limit)
        finally:
            # Leave before answering, so a client that sends the next write for a user as
            # soon as it has this answer is never counted as overlapping.
            self._leave(external_ids)
        return answer

    def _enter(self, external_ids: list[str], now: float) -> None:
        with self.lock:
            for eid in set(external_ids):
                if self._in_flight[eid] > 0:
                    self.violations.append(
                        {"external_id": eid, "at": now, "in_flight": self._in_flight[eid]}
                    )
                self._in_flight[eid] += 1
            self._requests_in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._requests_in_flight)

    def _leave(self, external_ids: list[str]) -> None:
        with self.lock:
            for eid in set(external_ids):
                self._in_flight[eid] -= 1
                if self._in_flight[eid] <= 0:
                    del self._in_flight[eid]
            self._requests_in_flight -= 1

    def _track_in_flight(
        self,
        attributes: list[t.Any],
        others: int,
        rl_headers: dict[str, str],
        over_limit: bool,
    ) -> t.Any:
        with self.lock:
            draws = [self.rng.random() for _ in range(7)]
            item_error_at = self.rng.randrange(len(attributes)) if attributes else -1
            status_5xx = self.rng.choice((500, 502, 503))
        if len(attributes) + others > self.max_objects:
            return self._finish(400, {"message": "Max Input Length Exceeded"}, rl_headers)
        with self.lock:
            canned = self._canned.popleft() if self._canned else None
        if canned is not None:
            return self._answer_canned(canned, attributes, rl_headers)
        if (self.enforce_rate_limit and over_limit) or draws[0] < self.rate_429:
            retry = {"X-Ratelimit-Retry-After": "1", "Retry-After": "1"}
            if over_limit:
                retry = {k: rl_headers["X-RateLimit-Reset"] for k in retry}
                if self.reset_as_epoch:
                    left = max(1, int(rl_headers["X-RateLimit-Reset"]) - int(time.time()))
                    retry = {k: str(left) for k in retry}
            return self._finish(429, {"message": "Rate Limited"}, {**rl_headers, **retry})
        if draws[1] < self.rate_5xx:
            return self._finish(status_5xx, {"message": "Internal Server Error"}, rl_headers)
        if draws[2] < self.rate_drop:
            return self._dropped("drop")

        fail_one = item_error_at if draws[3] < self.rate_item_error else -1
        errors, processed = self._apply(attributes, fail_one)

        if draws[4] < self.rate_5xx_after_apply:
            return self._finish(500, {"message": "Internal Server Error"}, rl_headers)
        if draws[5] < self.rate_drop_after_apply:
            return self._dropped("drop_after_apply")
        body: dict[str, t.Any] = {"message": "success"}
        if attributes:
            body["attributes_processed"] = processed
        if errors:
            body["errors"] = errors
        return self._finish(201, body, rl_headers)

    def _answer_canned(
        self, canned: Canned, attributes: list[t.Any], rl_headers: dict[str, str]
    ) -> t.Any:
        with self.lock:
            for index, obj in enumerate(attributes):
                eid = obj.get("external_id") if isinstance(obj, dict) else None
                if not canned.applies(index) or not isinstance(eid, str) or not eid:
                    continue
                self.datapoints += apply_attributes(
                    self.users.setdefault(eid, {}),
                    obj,
                    array_max_length=self.array_max_length,
                    points=self.datapoints_by_key,
                    notes=self.notes,
                )
        return self._finish(canned.status, canned.body, {**rl_headers, **canned.headers})

    def _apply(self, attributes: list[t.Any], fail_one: int) -> tuple[list[dict[str, t.Any]], int]:
        errors: list[dict[str, t.Any]] = []
        processed = 0

        def refuse(index: int, error_type: str) -> None:
            errors.append({"type": error_type, "input_array": "attributes", "index": index})

        with self.lock:
            for index, obj in enumerate(attributes):
                if not isinstance(obj, dict):
                    refuse(index, ERROR_NOT_AN_OBJECT)
                    continue
                eid = obj.get("external_id")
                if not isinstance(eid, str) or not eid:
                    refuse(index, ERROR_IDENTIFIER_REQUIRED)
                    continue
                if len(eid.encode("utf-8")) > MAX_EXTERNAL_ID_BYTES:
                    refuse(index, ERROR_EXTERNAL_ID_TOO_LARGE)
                    continue
                if eid in self.blacklisted_ids:
                    refuse(index, ERROR_BLACKLISTED)
                    continue
                if index == fail_one:
                    refuse(index, ERROR_RETRYABLE)
                    continue
                refused = self.object_error(obj) if self.object_error is not None else None
                if refused is not None:
                    errors.append({**refused, "index": index})
                    continue
                if obj.get("_update_existing_only") is True and eid not in self.users:
                    # Braze answers success and ignores the object.
                    self.notes["skipped_update_existing_only"] += 1
                    continue
                user = self.users.setdefault(eid, {})
                self.datapoints += apply_attributes(
                    user,
                    obj,
                    array_max_length=self.array_max_length,
                    points=self.datapoints_by_key,
                    notes=self.notes,
                )
                processed += 1
        return errors, processed

    # -- tampering with stored attributes (audit tests: drift made outside the engine) ------

    def drop_attribute(self, external_id: str, key: str) -> None:
        """Remove one attribute of a stored user, as a marketer's manual edit would."""
        with self.lock:
            self.users[external_id].pop(key, None)

    def set_attribute(self, external_id: str, key: str, value: t.Any) -> None:
        """Overwrite one stored attribute (e.g. flip ``In <name>`` from true to false)."""
        with self.lock:
            self.users.setdefault(external_id, {})[key] = value

    def flip_boolean(self, external_id: str, key: str) -> None:
        """Negate a stored boolean attribute."""
        with self.lock:
            self.users[external_id][key] = not self.users[external_id][key]

    def add_array_value(self, external_id: str, key: str, value: str) -> None:
        """Append a stray value to a stored array attribute."""
        with self.lock:
            array = self.users.setdefault(external_id, {}).setdefault(key, [])
            if value not in array:
                array.append(value)

    def delete_user(self, external_id: str) -> None:
        """Forget a user entirely (a deletion in Braze)."""
        with self.lock:
            self.users.pop(external_id, None)

    def _handle_export(self, headers: Mapping[str, str], raw: bytes) -> t.Any:
        key = self._authorized(headers)
        if key is None:
            return self._finish(401, {"message": "Invalid API key"})
        with self.lock:
            self.export_requests += 1
            rl_headers, _ = self._ratelimit("export:" + key, time.time())
            if self.export_429_next > 0:
                self.export_429_next -= 1
                retry = {"X-Ratelimit-Retry-After": "1", "Retry-After": "1"}
                return self._finish(429, {"message": "Rate Limited"}, {**rl_headers, **retry})
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._finish(400, {"message": "Bad Request"})
        if not isinstance(payload, dict) or not isinstance(payload.get("external_ids"), list):
            return self._finish(400, {"message": "Bad Request"})
        ids = payload["external_ids"]
        with self.lock:
            self.export_ids_requested.append(len(ids))
        if len(ids) > MAX_EXPORT_IDS:
            return self._finish(400, {"message": "The max number of ids per request was exceeded"})
        fields = payload.get("fields_to_export") or None
        users: list[dict[str, t.Any]] = []
        invalid: list[str] = []
        with self.lock:
            for eid in ids:
                stored = self.users.get(eid)
                if stored is None:
                    invalid.append(eid)
                    continue
                user: dict[str, t.Any] = {"external_id": eid}
                if fields is None or "custom_attributes" in fields:
                    user["custom_attributes"] = json.loads(
                        json.dumps(
                            {k: v for k, v in stored.items() if k not in ("email", "push_tokens")}
                        )
                    )
                if (fields is None or "email" in fields) and "email" in stored:
                    user["email"] = stored["email"]
                if (fields is None or "push_tokens" in fields) and "push_tokens" in stored:
                    user["push_tokens"] = list(stored["push_tokens"])
                users.append(user)
        body: dict[str, t.Any] = {"users": users, "message": "success"}
        if invalid:
            body["invalid_user_ids"] = invalid
        return self._finish(201, body, rl_headers)

    def _handle_faults(self, raw: bytes) -> t.Any:
        try:
            changes = json.loads(raw)
            self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return (400, {"message": str(exc)}, {})
        return (200, {"message": "success"}, {})


def main(argv: list[str] | None = None) -> int:
    """Run a FakeBraze until killed (SIGTERM or Ctrl-C)."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.braze_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="repeatable")
    parser.add_argument("--max-objects", type=int, default=MAX_OBJECTS)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--rate-5xx", type=float, default=0.0)
    parser.add_argument("--rate-5xx-after-apply", type=float, default=0.0)
    parser.add_argument("--rate-drop", type=float, default=0.0)
    parser.add_argument("--rate-drop-after-apply", type=float, default=0.0)
    parser.add_argument("--rate-item-error", type=float, default=0.0)
    parser.add_argument("--blacklist", action="append", default=[], help="repeatable")
    parser.add_argument("--auth-fail", action="store_true")
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-rate-limit", action="store_true")
    parser.add_argument("--ratelimit-limit", type=int, default=3000)
    parser.add_argument("--ratelimit-window-s", type=float, default=3.0)
    parser.add_argument("--reset-as-epoch", action="store_true")
    args = parser.parse_args(argv)

    fake = FakeBraze(
        api_keys=args.api_keys,
        max_objects=args.max_objects,
        rate_429=args.rate_429,
        rate_5xx=args.rate_5xx,
        rate_5xx_after_apply=args.rate_5xx_after_apply,
        rate_drop=args.rate_drop,
        rate_drop_after_apply=args.rate_drop_after_apply,
        rate_item_error=args.rate_item_error,
        blacklisted_ids=args.blacklist,
        auth_fail=args.auth_fail,
        delay_s=args.delay_s,
        seed=args.seed,
        enforce_rate_limit=args.enforce_rate_limit,
        ratelimit_limit=args.ratelimit_limit,
        ratelimit_window_s=args.ratelimit_window_s,
        reset_as_epoch=args.reset_as_epoch,
        host=args.host,
        port=args.port,
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    fake.start()
    print(fake.url, flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
