"""Body limits through the real waitress server and Python's ``http.client`` (SPEC §3.1).

A client that writes its whole request before reading the reply, as mParticle's does, must get
the JSON 413, not a reset connection; a body of exactly the limit is accepted; every endpoint is
covered.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
from waitress import wasyncore

from audience_sync import create_app
from audience_sync.body_limits import DRAIN_FACTOR
from audience_sync.process import create_http_server
from tests.conftest import FIREHOSE_TOKEN
from tests.integration.test_firehose_endpoint import table_counts

MIB = 1024 * 1024
LIMIT = MIB


@pytest.fixture
def server(make_runtime) -> Iterator[tuple[int, object]]:
    """A waitress server configured as ``run``/``serve`` configure it, on a free port; its loop
    runs in a thread that also closes it (closing from another thread breaks the loop)."""
    runtime = make_runtime(**{"firehose.max_body_bytes": LIMIT})
    http_server = create_http_server(create_app(runtime=runtime), runtime.settings, port=0)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            wasyncore.loop(timeout=0.05, map=http_server._map, count=1)
        http_server.task_dispatcher.shutdown()
        wasyncore.close_all(http_server._map)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield http_server.effective_port, runtime.engine
    stop.set()
    thread.join(10)


def registration_of_size(size: int) -> bytes:
    """A valid registration request padded with an ignored field to exactly ``size`` bytes."""
    head = {"type": "module_registration_request", "id": str(uuid.uuid4()), "pad": ""}
    bare = json.dumps(head).encode()
    head["pad"] = "x" * (size - len(bare))
    body = json.dumps(head).encode()
    assert len(body) == size
    return body


def chunks_of(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post(port: int, path: str, body: bytes, *, chunked: bool, token: bool = True):
    """POST the whole body, then read the answer (mParticle's order). A reset raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {FIREHOSE_TOKEN}"
    try:
        if chunked:
            conn.request("POST", path, body=chunks_of(body), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def assert_json_413(status: int, content_type: str, raw: bytes) -> None:
    assert status == 413, raw[:200]
    assert content_type == "application/json"
    body = json.loads(raw)
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == 413
    assert body["message"] == "request body too large"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_four_times_the_limit_gets_json_413_not_a_reset(server, chunked):
    port, engine = server
    body = b"{" + b" " * (DRAIN_FACTOR * LIMIT - 2) + b"}"
    # A reset would raise ConnectionResetError or BrokenPipeError here.
    assert_json_413(*post(port, "/firehose", body, chunked=chunked))
    assert sum(table_counts(engine).values()) == 0


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    "size", [LIMIT + 1, 2 * LIMIT, DRAIN_FACTOR * LIMIT + 1, DRAIN_FACTOR * LIMIT + LIMIT // 2]
)
def test_every_size_the_server_takes_in_gets_the_json_413(server, chunked, size):
    port, _ = server
    assert_json_413(*post(port, "/firehose", b"x" * size, chunked=chunked))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_exactly_the_limit_is_accepted_one_more_byte_is_not(server, chunked):
    port, _ = server
    status, _, raw = post(port, "/firehose", registration_of_size(LIMIT), chunked=chunked)
    assert status == 200, raw[:200]
    assert json.loads(raw)["type"] == "module_registration_response"
    assert_json_413(*post(port, "/firehose", registration_of_size(LIMIT + 1), chunked=chunked))


@pytest.mark.parametrize("path", ["/healthz", "/no-such-endpoint", "/firehose"])
def test_every_endpoint_refuses_oversized_bodies_in_the_json_shape(server, path):
    port, _ = server
    body = b"x" * (2 * LIMIT)
    assert_json_413(*post(port, path, body, chunked=False, token=False))
    assert_json_413(*post(port, path, body, chunked=True, token=False))


def test_connection_stays_usable_after_a_drained_413(server):
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/firehose", body=b"x" * (2 * LIMIT))
        response = conn.getresponse()
        response.read()
        assert response.status == 413
        assert response.getheader("Connection", "").lower() != "close"
        conn.request("GET", "/healthz")
        again = conn.getresponse()
        assert again.status == 200
        again.read()
    finally:
        conn.close()
