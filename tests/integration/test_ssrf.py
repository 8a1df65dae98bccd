"""SSRF: a ``customRestEndpoint`` that is not allowed never receives a request (SPEC §3.4).

A real listener on 127.0.0.2 counts every connection it accepts. Connections whose endpoint
tries to reach it through userinfo, case, IPv6 literals, trailing dots, encodings or other
numeric forms of the address are ``invalid_settings`` and the listener sees nothing; the same
listener, once allowed, does receive the write (the control that proves it would notice).
"""

from __future__ import annotations

import socket
import threading

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.store.schema import connections
from tests.integration.test_delivery import FAST, make_sender
from tests.support import membership, post, profile, subscription

REFUSED_PROBES = [
    "http://127.0.0.1:9@127.0.0.2:{port}",
    "http://127.0.0.1:{port}@127.0.0.2:{port}",
    "http://127.0.0.1:@127.0.0.2:{port}",
    "HTTP://127.0.0.1:9@127.0.0.2:{port}",
    "http://127.0.0.1:{port}\\@127.0.0.2:{port}",
    "http://127.0.0.1:{port}#@127.0.0.2:{port}",
    "http://127.0.0.1:{port} @127.0.0.2:{port}",
    "127.0.0.1:9@127.0.0.2:{port}",
    "http://127.0.0.2:{port}",
    "HTTP://127.0.0.2:{port}",
    "http://127.0.0.2.:{port}",
    "http://[::ffff:127.0.0.2]:{port}",
    "http://[::ffff:7f00:2]:{port}",
    "http://[::127.0.0.2]:{port}",
    "http://%31%32%37.0.0.2:{port}",
    "http://127.0.0.2%2e:{port}",
    "http://127.2:{port}",
    "http://2130706434:{port}",
    "http://0x7f.0.0.2:{port}",
    "http://0177.0.0.2:{port}",
    "http://\uff11\uff12\uff17.0.0.2:{port}",
]


class Tripwire:
    """A TCP listener on 127.0.0.2 that counts connections and answers Braze's success."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                    body = b'{"message":"success"}'
                    conn.sendall(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def tripwire():
    wire = Tripwire()
    yield wire
    wire.close()


@pytest.fixture
def fast_runtime(make_runtime):
    return lambda **overrides: make_runtime(**{**FAST, **overrides})


def deliver_all(runtime) -> None:
    sender = make_sender(runtime)
    for _ in range(5):
        sender.run_once()


def test_endpoints_that_are_not_allowed_receive_no_request(fast_runtime, tripwire, auth_headers):
    runtime = fast_runtime(**{"braze.allowed_custom_endpoints": ["http://127.0.0.1:"]})
    client = create_app(runtime=runtime).test_client()
    accounts = {}
    for n, probe in enumerate(REFUSED_PROBES):
        account_id = 7000 + n
        settings = {
            "restApiKey": f"key-{n}",
            "brazeInstance": "custom",
            "customRestEndpoint": probe.format(port=tripwire.port),
        }
        post(client, subscription(account_id, 1, "Probe", **settings), auth_headers)
        post(
            client,
            membership(account_id, [profile("victim", [(1, "Probe", "add")])], **settings),
            auth_headers,
        )
        accounts[account_id] = probe
    deliver_all(runtime)
    assert tripwire.connections == 0, tripwire.received
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(connections.c.account_id, connections.c.state))
        states = {account_id: state for account_id, state in rows}
    accepted = [accounts[a] for a, state in states.items() if state != "invalid_settings"]
    assert accepted == []


def test_the_same_listener_receives_the_write_once_allowed(fast_runtime, tripwire, auth_headers):
    runtime = fast_runtime(**{"braze.allowed_custom_endpoints": ["http://127.0.0.2:"]})
    client = create_app(runtime=runtime).test_client()
    settings = {
        "restApiKey": "key-allowed",
        "brazeInstance": "custom",
        "customRestEndpoint": f"HTTP://127.0.0.2:{tripwire.port}/",
    }
    post(client, subscription(7999, 1, "Allowed", **settings), auth_headers)
    post(
        client,
        membership(7999, [profile("someone", [(1, "Allowed", "add")])], **settings),
        auth_headers,
    )
    deliver_all(runtime)
    assert tripwire.connections >= 1
    assert tripwire.received[0].startswith(b"POST /users/track HTTP/1.1")
