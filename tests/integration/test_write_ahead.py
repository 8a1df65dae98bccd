"""The Braze sender's write-ahead record and lease (delivery/braze_sender.py, store/workers.py):
when Braze receives a request, every user in it is still leased by the sender, the lease was
renewed at most SEND_WITHIN_S earlier, and the user's write-ahead record says what the request
may change, even when the request waited for the rate budget. A claim's requests share one
renewal when they go out back to back."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from audience_sync.core.leases import SEND_WITHIN_S
from audience_sync.store.schema import outbox
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import (
    ACCOUNT,
    FAST,
    REST_KEY,
    connection_settings,
    make_sender,
)
from tests.support import drain, membership, pending_count, post, profile


@pytest.fixture
def fast_runtime(make_runtime):
    return lambda **overrides: make_runtime(**{**FAST, **overrides})


def _watch(engine: sa.Engine, lease_s: float, seen: list[dict]) -> object:
    """A fake Braze hook: what the outbox holds for each object's user as Braze receives it."""
    lock = threading.Lock()

    def on_object(obj):
        received = time.time()
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(outbox.c.claimed_by, outbox.c.claimed_until, outbox.c.in_flight).where(
                    outbox.c.external_id == obj["external_id"]
                )
            ).one()
            claimed = conn.execute(
                sa.select(outbox.c.external_id, outbox.c.in_flight).where(
                    outbox.c.claimed_by.is_not(None)
                )
            ).all()
        with lock:
            seen.append(
                {
                    "user": obj["external_id"],
                    "claimed_by": row.claimed_by,
                    "renewed_ago": received - (row.claimed_until - lease_s),
                    "in_flight": row.in_flight,
                    "claimed": {r.external_id: r.in_flight for r in claimed},
                }
            )
        return None

    return on_object


def _deliver(fast_runtime, auth_headers, users: int, **settings) -> list[dict]:
    from audience_sync import create_app

    runtime = fast_runtime(**{"braze.max_objects_per_request": 2, **settings})
    lease_s = runtime.settings.get("delivery.lease_s")
    seen: list[dict] = []
    with FakeBraze(api_keys={REST_KEY}, object_error=_watch(runtime.engine, lease_s, seen)) as fake:
        client = create_app(runtime=runtime).test_client()
        profiles = [profile(f"u{n}", [(101, "A", "add")]) for n in range(users)]
        post(client, membership(ACCOUNT, profiles, **connection_settings(fake)), auth_headers)
        drain(make_sender(runtime), runtime.engine, timeout_s=30)
        assert sorted(fake.users) == sorted(f"u{n}" for n in range(users))
    assert pending_count(runtime.engine) == 0
    assert len(seen) == users
    return seen


def test_a_claims_requests_are_written_ahead_before_the_first_goes_out(fast_runtime, auth_headers):
    seen = _deliver(fast_runtime, auth_headers, users=6)
    first = seen[0]
    # When the first request of the claim arrives, all six users are leased with their record.
    assert sorted(first["claimed"]) == [f"u{n}" for n in range(6)]
    assert all(record and record["keys"] for record in first["claimed"].values())
    for view in seen:
        assert view["claimed_by"] == "test-sender"
        assert view["in_flight"] and view["in_flight"]["keys"]
        assert view["renewed_ago"] <= SEND_WITHIN_S


def test_a_request_that_waited_for_the_budget_renews_its_lease_first(fast_runtime, auth_headers):
    # One request per 1.5 s: the third goes out 3 s after the claim's renewal, so it must have
    # renewed its own users' lease right before.
    seen = _deliver(fast_runtime, auth_headers, users=6, **{"braze.requests_per_second": 0.66})
    for view in seen:
        assert view["claimed_by"] == "test-sender"
        assert view["in_flight"] and view["in_flight"]["keys"]
        assert view["renewed_ago"] <= SEND_WITHIN_S, view
