"""One bad feed never stalls the others (SPEC §6.4, §6.5): an unexpected error while one feed's
batches are delivered is a counted attempt for them, dead-lettered with its reason once the
budgets are spent, and a feed whose planning fails stays queued; the other feeds are sent in the
same run."""

from __future__ import annotations

import logging
import time

import pytest
import sqlalchemy as sa

from audience_sync.delivery import currents_formation
from audience_sync.store import currents as queue
from audience_sync.store.schema import currents_batches
from tests.currents_support import FEED_SECRETS, FEEDS, currents_settings, http_event
from tests.fakes.mparticle_server import FakeMParticle
from tests.integration.test_currents_delivery import counts, drain, live, make_sender, post

BAD = "android"


@pytest.fixture
def mp():
    with FakeMParticle(feeds=FEED_SECRETS) as server:
        yield server


def events_of(platform, users, event_type="users.messages.pushnotification.Send"):
    return [http_event(event_type, platform=platform, user=f"{platform}-{n}") for n in users]


def batches_of(engine, feed):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(
                currents_batches.c.state,
                currents_batches.c.attempts,
                currents_batches.c.last_reason,
            ).where(currents_batches.c.feed == feed)
        ).all()


def test_a_feed_whose_delivery_raises_is_retried_then_dead_lettered_and_others_arrive(
    make_client, mp, monkeypatch, caplog
):
    # A first retry no sooner than 0.25 s: the run that fails them must not claim them again.
    settings = currents_settings(
        mp.url,
        delivery__max_attempts=2,
        currents__retention_s=0.5,
        delivery__backoff_base_s=0.5,
        delivery__backoff_cap_s=1.0,
    )
    client = make_client(**settings)
    runtime = client.application.extensions["audience_sync"]
    good = events_of("ios", range(5)) + events_of("web", range(2))
    post(client, events_of(BAD, range(3)) + good)
    sender = make_sender(runtime)
    real_send = sender.client.send

    def send(credentials, body, *, now):
        if credentials.key == f"{BAD}-key":
            raise RuntimeError("a bug that only this feed meets")
        return real_send(credentials, body, now=now)

    monkeypatch.setattr(sender.client, "send", send)
    with caplog.at_level(logging.ERROR):
        sender.run_once()
    # The same run sent the other feeds...
    assert sorted(mp.message_ids()) == sorted(e["id"] for e in good)
    # ...and the bad feed's batches (one per user) spent one attempt each, with the reason.
    assert sorted(batches_of(runtime.engine, BAD)) == [("pending", 1, "internal_error")] * 3
    assert counts(runtime.engine)["retry_internal_error"] == 3
    errors = [r for r in caplog.records if getattr(r, "action", None) == "delivery_error"]
    assert errors and errors[0].destination == BAD and errors[0].error == "RuntimeError"
    assert f"{BAD}-secret" not in caplog.text
    deadline = time.monotonic() + 20
    while live(runtime.engine):
        assert time.monotonic() < deadline, batches_of(runtime.engine, BAD)
        if not sender.run_once():
            time.sleep(0.02)
    with runtime.engine.connect() as conn:
        dead = queue.dead_letters(conn)
    assert sorted(d["reason"] for d in dead) == ["gave_up: internal_error"] * 3
    # The failure that gives up is not written as an attempt: a dead batch shows those before.
    rows = batches_of(runtime.engine, BAD)
    assert len(rows) == 3 and all(state == "dead" and attempts >= 1 for state, attempts, _ in rows)
    assert counts(runtime.engine)["dead_letter"] == 3
    assert mp.delivered_twice() == [] and mp.rejected == []


def test_a_feed_whose_planning_raises_stays_queued_and_others_arrive(
    make_runtime, make_client, mp, monkeypatch
):
    # Held at intake (no feed took them), then queued for the sender to plan once feeds do.
    client = make_client(**currents_settings(mp.url, feeds={"web": FEEDS["web"]}))
    bad = events_of(BAD, range(3))
    good = events_of("ios", range(4))
    assert post(client, bad + good)["held"] == 7
    runtime = make_runtime(**currents_settings(mp.url))
    real_plan = currents_formation.plan_batches

    def plan_batches(events, **kwargs):
        if any(e.feed == BAD for e in events):
            raise ValueError("a bug in planning this feed's events")
        return real_plan(events, **kwargs)

    monkeypatch.setattr(currents_formation, "plan_batches", plan_batches)
    sender = make_sender(runtime)
    deadline = time.monotonic() + 20
    while sorted(mp.message_ids()) != sorted(e["id"] for e in good):
        assert time.monotonic() < deadline
        sender.run_once()
        time.sleep(0.02)
    assert live(runtime.engine) == len(bad)  # kept, not lost
    assert batches_of(runtime.engine, BAD) == []
    monkeypatch.setattr(currents_formation, "plan_batches", real_plan)
    drain(sender, runtime.engine)
    assert sorted(mp.message_ids()) == sorted(e["id"] for e in bad + good)


def test_a_probe_that_raises_is_one_attempt_and_others_arrive(make_client, mp, monkeypatch):
    client = make_client(**currents_settings(mp.url, currents__probe_interval_s=0.1))
    runtime = client.application.extensions["audience_sync"]
    mp.configure(unauthorized={f"{BAD}-key"})
    post(client, events_of(BAD, range(1)))
    sender = make_sender(runtime)
    deadline = time.monotonic() + 10
    while sender.states.get(BAD) != "paused":
        assert time.monotonic() < deadline
        sender.run_once()
    real_send = sender.client.send

    def send(credentials, body, *, now):
        if credentials.key == f"{BAD}-key":
            raise RuntimeError("a bug that only this feed's probe meets")
        return real_send(credentials, body, now=now)

    monkeypatch.setattr(sender.client, "send", send)
    good = events_of("ios", range(3))
    post(client, good)
    while batches_of(runtime.engine, BAD) != [("pending", 1, "internal_error")]:
        assert time.monotonic() < deadline, batches_of(runtime.engine, BAD)
        sender.run_once()
        time.sleep(0.02)
    drain_until = time.monotonic() + 10
    while sorted(mp.message_ids()) != sorted(e["id"] for e in good):
        assert time.monotonic() < drain_until
        sender.run_once()
    assert sender.states[BAD] == "paused"
