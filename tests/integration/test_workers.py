"""The worker registry on SQLite and PostgreSQL: heartbeats, reaping, cutting dead leases."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from audience_sync.braze.ratelimit import RateBudget
from audience_sync.core.leases import SEND_WITHIN_S
from audience_sync.delivery.heartbeat import Heartbeat
from audience_sync.store import outbox, workers
from audience_sync.store.schema import outbox as outbox_table
from tests.integration.test_outbox import _workspace

LEASE_S = 120.0
REQUEST_TIMEOUT_S = 5.0
TIMEOUT_S = 10.0


def _register(engine, worker_id, now, senders=2):
    with engine.begin() as conn:
        workers.register(conn, worker_id=worker_id, hostname="h", pid=1, senders=senders, now=now)


def _claim(engine, claimer, now, limit=2):
    with engine.begin() as conn:
        return outbox.claim(conn, worker_id=claimer, now=now, lease_s=LEASE_S, limit=limit)


def _leases(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                outbox_table.c.external_id,
                outbox_table.c.claimed_by,
                outbox_table.c.claimed_until,
            )
        )
        return {r.external_id: (r.claimed_by, r.claimed_until) for r in rows}


def _reap(engine, now):
    with engine.begin() as conn:
        return workers.reap_stale(
            conn,
            now=now,
            timeout_s=TIMEOUT_S,
            lease_s=LEASE_S,
            request_timeout_s=REQUEST_TIMEOUT_S,
        )


@pytest.fixture
def six_users(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, [f"u{i}" for i in range(6)], now=0)
    return ws


def test_a_stale_workers_leases_end_when_its_requests_must_have(engine, six_users):
    _register(engine, "dead", now=100)
    _register(engine, "alive", now=100)
    dead = _claim(engine, "dead:1", now=100)
    alive = _claim(engine, "alive:0", now=100)
    unregistered = _claim(engine, "test-sender", now=100)
    with engine.begin() as conn:
        assert workers.beat(conn, worker_id="alive", now=108)
        assert workers.live_count(conn, now=108, timeout_s=TIMEOUT_S) == 2
        assert workers.live_count(conn, now=111, timeout_s=TIMEOUT_S) == 1
    assert _reap(engine, now=109) == workers.Reaped()  # not stale yet
    assert _reap(engine, now=111) == workers.Reaped(workers=1, leases=2)
    leases = _leases(engine)
    for c in dead:
        # Claimed, never renewed for a request (no write-ahead record): free at once.
        assert leases[c.external_id] == (None, None)
    for c in alive:
        assert leases[c.external_id] == ("alive:0", 100 + LEASE_S)
    for c in unregistered:
        assert leases[c.external_id] == ("test-sender", 100 + LEASE_S)
    # Cut once only; claimable again by others, and the dead sender's renew misses them.
    assert _reap(engine, now=112) == workers.Reaped()
    assert {c.external_id for c in _claim(engine, "alive:1", now=106, limit=10)} == {
        c.external_id for c in dead
    }
    with engine.begin() as conn:
        held = outbox.renew(
            conn,
            worker_id="dead:1",
            workspace_id=six_users,
            in_flight={c.external_id: None for c in dead},
            until=300,
        )
    assert held == set()


RECORD = {"keys": ["SegmentMembership"], "values": []}


def test_a_lease_that_may_cover_a_request_ends_when_the_request_must_have(engine, six_users):
    _register(engine, "dead", now=100)
    sent, claimed = _claim(engine, "dead:0", now=100)
    with engine.begin() as conn:
        # Renewed at 103 right before a request: the write-ahead record says what it may change.
        outbox.renew(
            conn,
            worker_id="dead:0",
            workspace_id=six_users,
            in_flight={sent.external_id: RECORD},
            until=103 + LEASE_S,
        )
        # A record stored as JSON null (an earlier hand-back restored "nothing uncertain").
        outbox.renew(
            conn,
            worker_id="dead:0",
            workspace_id=six_users,
            in_flight={claimed.external_id: None},
            until=100 + LEASE_S,
        )
    assert _reap(engine, now=200) == workers.Reaped(workers=1, leases=2)
    leases = _leases(engine)
    # The request went out by 103 + SEND_WITHIN_S, and timed out REQUEST_TIMEOUT_S later.
    assert leases[sent.external_id] == (
        None,
        pytest.approx(103 + SEND_WITHIN_S + REQUEST_TIMEOUT_S),
    )
    assert leases[claimed.external_id] == (None, None)


def test_a_reaped_worker_that_beats_again_must_register_again(engine):
    _register(engine, "slow", now=100)
    assert _reap(engine, now=200).workers == 1
    with engine.begin() as conn:
        assert not workers.beat(conn, worker_id="slow", now=201)
    _register(engine, "slow", now=201)
    with engine.begin() as conn:
        assert workers.beat(conn, worker_id="slow", now=202)
        workers.unregister(conn, worker_id="slow")
        assert workers.live_count(conn, now=202, timeout_s=TIMEOUT_S) == 0


def test_the_only_sender_takes_over_every_lease_and_forgets_its_predecessors(engine, six_users):
    _register(engine, "killed", now=100)
    _register(engine, "me", now=101)
    _claim(engine, "killed:0", now=100)
    _claim(engine, "test-sender", now=100)
    with engine.begin() as conn:
        assert [w.id for w in workers.others(conn, worker_id="me")] == ["killed"]
        assert workers.take_over(conn, worker_id="me") == 4
        assert workers.others(conn, worker_id="me") == []
        assert workers.take_over(conn, worker_id="me") == 0
    assert len(_claim(engine, "me:0", now=101, limit=10)) == 6


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _start_heartbeat(runtime, worker_id):
    stop = threading.Event()
    beat = Heartbeat(
        engine=runtime.engine,
        settings=runtime.settings,
        worker_id=worker_id,
        senders=1,
        budget=RateBudget(10),
        stop=stop,
    ).start()
    stop.set()
    beat.join(5)


def test_the_sqlite_sender_takes_over_only_from_processes_that_are_gone(runtime, six_users):
    engine = runtime.engine
    now = time.time()
    with engine.begin() as conn:
        workers.register(
            conn,
            worker_id="running",
            hostname=socket.gethostname(),
            pid=os.getpid(),
            senders=1,
            now=now,
        )
    _claim(engine, "running:0", now=now)
    _start_heartbeat(runtime, "me")
    assert {by for by, _ in _leases(engine).values() if by} == {"running:0"}

    with engine.begin() as conn:
        workers.unregister(conn, worker_id="running")
        workers.register(
            conn,
            worker_id="killed",
            hostname=socket.gethostname(),
            pid=_dead_pid(),
            senders=1,
            now=now,
        )
    _claim(engine, "killed:0", now=now)
    _start_heartbeat(runtime, "restarted")
    held = {by for by, _ in _leases(engine).values() if by}
    if engine.dialect.name == "sqlite":
        # The only sender on SQLite: what a gone process held is sent again at once (the
        # first sender's leases went too: "running" had left the registry).
        assert held == set()
    else:
        # Several processes send on PostgreSQL: a silent one is reaped, a fresh one never.
        assert held == {"running:0", "killed:0"}
