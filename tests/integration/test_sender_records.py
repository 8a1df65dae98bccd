"""When a running sender's records commit (delivery/loop.py): a sender that stops right after a
request, or runs out of work, has committed what it holds, so nothing Braze accepted is left
unrecorded."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from audience_sync.core.states import DeliveryCounter
from audience_sync.store.counters import totals
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import (
    ACCOUNT,
    FAST,
    REST_KEY,
    connection_settings,
    make_sender,
)
from tests.support import membership, pending_count, post, profile

USERS = 12


@pytest.fixture
def runtime(make_runtime):
    return make_runtime(**{**FAST, "braze.max_objects_per_request": 2})


def _accepted(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return sum(
            n for (_scope, reason), n in totals(conn).items() if reason == DeliveryCounter.ACCEPTED
        )


def _post_users(runtime, fake) -> None:
    from audience_sync import create_app

    client = create_app(runtime=runtime).test_client()
    profiles = [profile(f"u{n}", [(101, "A", "add")]) for n in range(USERS)]
    post(client, membership(ACCOUNT, profiles, **connection_settings(fake)), _headers())


def _headers() -> dict[str, str]:
    from tests.conftest import FIREHOSE_TOKEN

    return {"Authorization": f"Token {FIREHOSE_TOKEN}"}


def test_a_sender_stopped_right_after_its_last_request_records_it(runtime):
    stop = threading.Event()
    received: list[str] = []

    def on_object(obj):
        received.append(obj["external_id"])
        if len(received) == USERS:
            stop.set()  # the sender stops with the last request's record still deferred
        return None

    with FakeBraze(api_keys={REST_KEY}, object_error=on_object) as fake:
        _post_users(runtime, fake)
        sender = make_sender(runtime, stop=stop)
        thread = threading.Thread(target=sender.run_forever)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
        assert sorted(fake.users) == sorted(f"u{n}" for n in range(USERS))
    assert pending_count(runtime.engine) == 0
    assert _accepted(runtime.engine) == USERS


def test_a_running_sender_records_everything_once_out_of_work(runtime):
    stop = threading.Event()
    with FakeBraze(api_keys={REST_KEY}) as fake:
        _post_users(runtime, fake)
        sender = make_sender(runtime, stop=stop)
        thread = threading.Thread(target=sender.run_forever)
        thread.start()
        try:
            deadline = threading.Event()
            for _ in range(300):
                if pending_count(runtime.engine) == 0 and _accepted(runtime.engine) == USERS:
                    break
                deadline.wait(0.1)
            # Recorded while the sender still runs (idle now): nothing waits for a next claim.
            assert pending_count(runtime.engine) == 0
            assert _accepted(runtime.engine) == USERS
        finally:
            stop.set()
            thread.join(30)
