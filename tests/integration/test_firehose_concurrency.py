"""Concurrent Firehose requests: mParticle retries in parallel, and sends in parallel."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from audience_sync.firehose import testing as ft
from tests.support import message_id_count

T0 = 1_714_592_744_000
THREADS = 8


def run_in_threads(app, auth_headers, bodies) -> list[int]:
    statuses: list[int] = [0] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post("/firehose", json=bodies[index], headers=auth_headers)
        statuses[index] = response.status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar_one()


def test_concurrent_duplicates_are_applied_once(app, engine, auth_headers):
    message = ft.membership_request(
        9,
        [ft.profile(f"u{i}", [ft.audience_change(1), ft.audience_change(2)]) for i in range(50)],
        timestamp_ms=T0,
    )
    assert run_in_threads(app, auth_headers, [message] * THREADS) == [200] * THREADS
    assert message_id_count(engine) == 1
    assert (
        scalar(engine, "SELECT SUM(count) FROM counters WHERE reason = 'memberships_applied'")
        == 100
    )
    assert (
        scalar(engine, "SELECT SUM(count) FROM counters WHERE reason = 'duplicate_message'")
        == THREADS - 1
    )
    assert scalar(engine, "SELECT MAX(generation) FROM outbox") == 1


def test_concurrent_first_messages_of_new_connections_and_shared_users(app, engine, auth_headers):
    # Several accounts share one Braze key (one workspace), all new, with overlapping users
    # listed in different orders.
    bodies = []
    for n in range(THREADS):
        users = [f"u{i}" for i in range(40)]
        if n % 2:
            users.reverse()
        bodies.append(
            ft.membership_request(
                100 + n % 3,
                [ft.profile(u, [ft.audience_change(1 + n % 2)]) for u in users],
                timestamp_ms=T0 + n,
            )
        )
    assert run_in_threads(app, auth_headers, bodies) == [200] * THREADS
    assert scalar(engine, "SELECT COUNT(*) FROM connections") == 3
    assert scalar(engine, "SELECT COUNT(DISTINCT workspace_id) FROM connections") == 1
    assert message_id_count(engine) == THREADS
    assert scalar(engine, "SELECT COUNT(*) FROM users") == 3 * 40
    assert scalar(engine, "SELECT COUNT(*) FROM outbox") == 40  # one Braze user each
