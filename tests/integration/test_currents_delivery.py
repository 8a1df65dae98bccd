"""Currents to mParticle end to end against a local mParticle-compatible server whose every
received batch is judged by mParticle's SDK (SPEC §6.3 to §6.5)."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audience_sync.cli import main
from audience_sync.currents.importer import import_paths
from audience_sync.currents.maintenance import currents_expire, currents_feeds
from audience_sync.currents.service import CurrentsConfig
from audience_sync.delivery.currents_sender import CurrentsSender
from audience_sync.mparticle.client import MParticleClient
from audience_sync.mparticle.ratelimit import BatchBudget
from audience_sync.store import currents as queue
from audience_sync.store.counters import totals
from audience_sync.store.schema import currents_batch_bodies, currents_batches, currents_dedup
from audience_sync.transport import Transport
from tests.currents_support import (
    FEED_SECRETS,
    FEEDS,
    avro_samples,
    bearer,
    copy_sample,
    currents_settings,
    http_event,
    http_samples,
    with_fresh_id,
)
from tests.fakes.mparticle_server import FakeMParticle, wait_for


@pytest.fixture
def mp():
    with FakeMParticle(feeds=FEED_SECRETS) as server:
        yield server


def make_sender(runtime, worker="w1", budget=None):
    client = MParticleClient(Transport(name="mparticle", timeout_s=5))
    return CurrentsSender(
        engine=runtime.engine,
        settings=runtime.settings,
        client=client,
        budget=budget or BatchBudget(runtime.settings.get("currents.batches_per_second")),
        worker_id=worker,
    )


def live(engine) -> int:
    with engine.connect() as conn:
        return queue.backlog(conn)


def drain(sender, engine, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while live(engine):
        assert time.monotonic() < deadline, f"{live(engine)} events not delivered"
        if not sender.run_once():
            time.sleep(0.02)


def post(client, events):
    response = client.post("/currents", json={"events": events}, headers=bearer())
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def counts(engine):
    with engine.connect() as conn:
        return {r: n for (s, r), n in totals(conn, scope="currents").items()}


def test_every_sample_arrives_in_its_feed_with_the_sdk_accepting_every_batch(
    make_runtime, make_client, mp, tmp_path
):
    settings = currents_settings(mp.url)
    client = make_client(**settings)
    runtime = client.application.extensions["audience_sync"]
    http = [with_fresh_id(e) for _, e in http_samples()]
    accepted = post(client, http)
    for n, sample in enumerate(avro_samples()):
        copy_sample(sample, tmp_path / f"event_type={sample.stem}" / f"{n}.avro")
    summary = import_paths(
        runtime.engine, CurrentsConfig.from_settings(runtime.settings), [tmp_path]
    )
    sender = make_sender(runtime)
    drain(sender, runtime.engine)

    assert mp.rejected == []
    assert mp.delivered_twice() == []
    expected = accepted["queued"] + summary.forwarded
    assert sum(mp.message_ids().values()) == expected
    exported = {
        e["id"]
        for e in http
        if CurrentsConfig.from_settings(runtime.settings).table.get(e["event_type"])
    }
    assert exported <= set(mp.message_ids())
    # Feed credentials, names, identities, device info and attributes.
    email_open = next(
        (b, e)
        for b, e in mp.events_of("unbound-key")
        if e["data"].get("event_name") == "Email Opens"
    )
    batch, event = email_open
    assert batch["user_identities"] == {
        "customerid": "external_user_id",
        "email": "example@braze.com",
    }
    assert batch["environment"] == "production" and batch["schema_version"] == 2
    assert event["event_type"] == "custom_event"
    assert event["data"]["custom_event_type"] == "other"
    assert event["data"]["timestamp_unixtime_ms"] == 2033802504000
    assert event["data"]["custom_attributes"]["campaign_name"] == "campaign_name"
    assert event["data"]["custom_attributes"]["is_amp"] == "true"
    push = [e for _, e in mp.events_of("android-key")]
    assert {e["data"]["event_name"] for e in push} >= {"Push Notification Sends"}
    uninstall = [e for _, e in mp.events_of("unbound-key") if e["event_type"] == "uninstall"]
    assert len(uninstall) == 2  # one Custom HTTP sample, one Avro sample
    sms = next(
        b for b, e in mp.events_of("unbound-key") if e["data"].get("event_name") == "SMS Sends"
    )
    assert sms["user_attributes"] == {"$mobile": "+1234567890"}
    assert counts(runtime.engine)["forwarded"] == expected
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(currents_batches)).scalar() == 0
        bodies = sa.select(sa.func.count()).select_from(currents_batch_bodies)
        assert conn.execute(bodies).scalar() == 0  # deleted with their batches


def test_many_events_of_one_user_share_batches_and_keep_their_order(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    ids = []
    for start in range(0, 300, 100):
        events = [
            http_event(user=f"u{n % 3}", time=1_700_000_000 + n) for n in range(start, start + 100)
        ]
        ids += [e["id"] for e in events]
        post(client, events)
    drain(make_sender(runtime), runtime.engine)
    order = mp.order_by_user()
    for user in ("u0", "u1", "u2"):
        assert order[user] == [i for n, i in enumerate(ids) if n % 3 == int(user[1])]
    assert len(mp.received) == 3  # one batch per user: 100 events each
    assert mp.rejected == []


def test_401_pauses_the_feed_keeps_events_and_resumes_in_arrival_order(make_client, mp):
    client = make_client(**currents_settings(mp.url, currents__probe_interval_s=0.3))
    runtime = client.application.extensions["audience_sync"]
    sender = make_sender(runtime)
    mp.configure(unauthorized={"unbound-key"})
    first = [http_event(user=f"u{n % 4}") for n in range(40)]
    post(client, first)
    deadline = time.monotonic() + 10
    while currents_feeds(runtime.engine, runtime.settings)[3]["state"] != "paused":
        assert time.monotonic() < deadline
        sender.run_once()
    feeds = {f["name"]: f for f in currents_feeds(runtime.engine, runtime.settings)}
    assert feeds["unbound"]["state"] == "paused"
    assert feeds["unbound"]["reason"] == "auth_401"
    assert feeds["unbound"]["backlog"] == 40
    assert feeds["ios"]["state"] == "active"
    second = [http_event(user=f"u{n % 4}") for n in range(40)]
    post(client, second)  # still accepted and kept while paused
    deadline = time.monotonic() + 10
    while mp.statuses[401] < 3:  # probes keep failing
        assert time.monotonic() < deadline
        sender.run_once()
        time.sleep(0.02)
    assert mp.received == []
    mp.configure(unauthorized=set())
    drain(sender, runtime.engine)
    everything = [e["id"] for e in first + second]
    order = mp.order_by_user()
    for n in range(4):
        assert order[f"u{n}"] == everything[n::4]
    assert mp.delivered_twice() == [] and mp.rejected == []
    feeds = {f["name"]: f for f in currents_feeds(runtime.engine, runtime.settings)}
    assert feeds["unbound"]["state"] == "active" and feeds["unbound"]["backlog"] == 0


def test_changed_feed_settings_probe_at_once(make_runtime, make_client, mp):
    settings = currents_settings(mp.url, currents__probe_interval_s=3600)
    client = make_client(**settings)
    runtime = client.application.extensions["audience_sync"]
    mp.configure(unauthorized={"unbound-key"})
    post(client, [http_event()])
    sender = make_sender(runtime)
    for _ in range(3):
        sender.run_once()
    assert currents_feeds(runtime.engine, runtime.settings)[3]["state"] == "paused"
    # New credentials (a restart with new settings): probed at once, not in an hour.
    feeds = dict(currents_settings(mp.url)["currents__feeds"])
    feeds["unbound"] = {"key": "new-key", "secret": "new-secret", "platform": "unbound"}
    mp.configure(feeds={**mp.feeds, "new-key": "new-secret"})
    fixed = make_runtime(**currents_settings(mp.url, feeds=feeds, currents__probe_interval_s=3600))
    drain(make_sender(fixed, worker="w2"), fixed.engine, timeout_s=10)
    assert [r.feed_key for r in mp.received] == ["new-key"]


def test_past_retention_events_are_dead_lettered_with_a_reason_and_replay_delivers(
    make_client, mp, monkeypatch
):
    client = make_client(**currents_settings(mp.url, currents__retention_s=0.5))
    runtime = client.application.extensions["audience_sync"]
    sender = make_sender(runtime)
    mp.configure(unauthorized={"unbound-key"})
    events = [http_event(user="u") for _ in range(5)]
    post(client, events)
    for _ in range(3):
        sender.run_once()
    time.sleep(0.6)
    assert currents_expire(runtime.engine, runtime.settings) == 5
    with runtime.engine.connect() as conn:
        dead = queue.dead_letters(conn, feed="unbound")
    assert len(dead) == 5
    assert all(d["reason"].startswith("retention_expired: auth_401") for d in dead)
    assert counts(runtime.engine)["dead_letter"] == 5
    mp.configure(unauthorized=set())
    for _ in range(5):
        sender.run_once()
    assert mp.received == []  # dead letters are kept, not sent
    monkeypatch.setenv("AUDIENCE_SYNC_DATABASE__URL", runtime.settings.get("database.url"))
    result = CliRunner().invoke(main, ["replay", "--feed", "unbound"])
    assert result.exit_code == 0, result.output
    assert "re-queued 5" in result.output
    drain(sender, runtime.engine)
    assert mp.order_by_user()["u"] == [e["id"] for e in events]


def test_a_400_is_split_to_isolate_the_bad_batch_which_is_dead_lettered(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    post(client, [http_event(user=f"u{n}") for n in range(10)])
    sender = make_sender(runtime)
    with runtime.engine.connect() as conn:  # formed by the intake, in arrival order
        batch_ids = (
            conn.execute(sa.select(currents_batches.c.id).order_by(currents_batches.c.first_seq))
            .scalars()
            .all()
        )
    poisoned = batch_ids[3]
    mp.configure(refuse_batches={poisoned})
    drain(sender, runtime.engine)
    with runtime.engine.connect() as conn:
        dead = queue.dead_letters(conn)
    assert len(dead) == 1 and dead[0]["reason"] == (
        f"mparticle_bad_request: batch {poisoned}: invalid schema"
    )
    assert len(mp.received) == 9


def test_429_is_honoured_without_spending_an_attempt(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    mp.configure(rate_429=1.0, retry_after_s=0.3)
    post(client, [http_event()])
    sender = make_sender(runtime)
    # Measured from before the send, so a slow machine cannot eat the margin.
    sent_after = time.time()
    sender.run_once()
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(currents_batches)).one()
    assert row.attempts == 0 and row.last_reason == "rate_limited"
    assert row.due_at >= sent_after + 0.3
    mp.configure(rate_429=0.0)
    drain(sender, runtime.engine)
    assert len(mp.received) == 1


def test_5xx_and_drops_retry_until_delivered_exactly_once(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    mp.configure(rate_5xx=0.3, rate_drop=0.2, rate_drop_after=0.3)
    events = [http_event(user=f"u{n % 7}") for n in range(300)]
    for start in range(0, 300, 100):
        post(client, events[start : start + 100])
    drain(make_sender(runtime), runtime.engine, timeout_s=60)
    assert sorted(mp.message_ids()) == sorted(e["id"] for e in events)
    assert mp.delivered_twice() == []
    order = mp.order_by_user()
    for n in range(7):
        assert order[f"u{n}"] == [e["id"] for e in events[n::7]]


def test_two_senders_never_have_a_batch_in_flight_twice(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    events = [http_event(user=f"u{n % 5}") for n in range(500)]
    for start in range(0, 500, 100):
        post(client, events[start : start + 100])
    budget = BatchBudget(10_000)
    senders = [make_sender(runtime, worker=f"w{n}", budget=budget) for n in range(2)]
    stop = threading.Event()

    def loop(sender):
        while not stop.is_set() and live(runtime.engine):
            if not sender.run_once():
                time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    wait_for(lambda: live(runtime.engine) == 0, timeout_s=60)
    stop.set()
    for t in threads:
        t.join()
    assert mp.duplicate_batches == 0
    assert sorted(mp.message_ids()) == sorted(e["id"] for e in events)
    order = mp.order_by_user()
    for n in range(5):
        assert order[f"u{n}"] == [e["id"] for e in events[n::5]]


def test_status_read_shows_feeds_without_secrets(make_client, mp):
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    post(
        client,
        [
            http_event(),
            http_event("users.messages.pushnotification.Send", platform="ios", user="x"),
        ],
    )
    feeds = {f["name"]: f for f in currents_feeds(runtime.engine, runtime.settings)}
    assert feeds["unbound"]["backlog"] == 1 and feeds["ios"]["backlog"] == 1
    assert feeds["unbound"]["oldest_age_s"] >= 0 and feeds["android"]["oldest_age_s"] is None
    assert "secret" not in str(feeds) and "key" not in {k for f in feeds.values() for k in f}


def test_later_events_never_overtake_a_pending_batch_once_the_queue_empties(make_client, mp):
    """Batched events leave the queue; a new event must still sort after them."""
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    sender = make_sender(runtime)
    mp.configure(rate_5xx=1.0)
    first = http_event(user="u")
    post(client, [first])
    sender.run_once()  # formed (the queue is empty again) and failed: pending, backing off
    second = http_event(user="u")
    post(client, [second])
    sender.form_batches(time.time())
    with runtime.engine.connect() as conn:
        seqs = (
            conn.execute(
                sa.select(currents_batches.c.first_seq).order_by(currents_batches.c.created_at)
            )
            .scalars()
            .all()
        )
    assert seqs[0] < seqs[1]
    mp.configure(rate_5xx=0.0)
    drain(sender, runtime.engine)
    assert mp.order_by_user()["u"] == [first["id"], second["id"]]


def test_held_events_are_sent_once_a_feed_takes_them(make_runtime, make_client, mp):
    only_ios = {"ios": FEEDS["ios"]}
    client = make_client(**currents_settings(mp.url, feeds=only_ios))
    runtime = client.application.extensions["audience_sync"]
    event = http_event()  # an email event: the unbound feed's
    assert post(client, [event])["held"] == 1
    sender = make_sender(runtime)
    for _ in range(3):
        sender.run_once()
    assert mp.received == []
    with runtime.engine.connect() as conn:
        assert queue.backlog(conn) == 1  # held, not dropped
    later = make_runtime(**currents_settings(mp.url))  # the unbound feed is configured
    drain(make_sender(later, worker="w2"), later.engine)
    assert [r.feed_key for r in mp.received] == ["unbound-key"]
    assert mp.message_ids() == {event["id"]: 1}


def test_an_event_accepted_again_after_the_dedup_window_forms_a_new_batch(make_client, mp):
    client = make_client(**currents_settings(mp.url, currents__retention_s=0.2))
    runtime = client.application.extensions["audience_sync"]
    sender = make_sender(runtime)
    mp.configure(unauthorized={"unbound-key"})
    event = http_event(user="u")
    post(client, [event])
    for _ in range(2):
        sender.run_once()
    time.sleep(0.3)
    assert currents_expire(runtime.engine, runtime.settings) == 1  # its batch is dead, kept
    with runtime.engine.begin() as conn:
        conn.execute(sa.update(currents_dedup).values(seen_at=0.0))  # the window has passed
    assert post(client, [event])["queued"] == 1
    mp.configure(unauthorized=set())
    drain(sender, runtime.engine)  # planning is not stuck on the dead batch's id
    assert mp.message_ids() == {event["id"]: 1}
    with runtime.engine.connect() as conn:
        assert len(queue.dead_letters(conn)) == 1


def test_batches_whose_lease_could_end_mid_request_are_given_back_not_sent(make_client, mp):
    """A sender never starts a request its lease might not outlast (another sender could take
    the batches meanwhile): the rest are released, then claimed and sent, each exactly once."""
    client = make_client(
        **currents_settings(
            mp.url, delivery__lease_s=10.0, currents__timeout_s=2.0, braze__timeout_s=2.0
        )
    )
    runtime = client.application.extensions["audience_sync"]
    events = [http_event(user=f"u{n}") for n in range(250)]
    post(client, events)
    clock = [time.time() + 5]  # the events have waited out the coalescing window
    mparticle = MParticleClient(Transport(name="mparticle", timeout_s=5))
    send = mparticle.send

    def slow_send(*args, **kwargs):
        outcome = send(*args, **kwargs)
        clock[0] += 6.0  # each request takes 6 s of a 10 s lease
        return outcome

    mparticle.send = slow_send
    sender = CurrentsSender(
        engine=runtime.engine,
        settings=runtime.settings,
        client=mparticle,
        budget=BatchBudget(runtime.settings.get("currents.batches_per_second")),
        worker_id="slow",
        clock=lambda: clock[0],
    )
    sender.run_once()  # forms 250 batches leased for 10 s: 3 requests, time for 2
    assert len(mp.received) == 200
    with runtime.engine.connect() as conn:
        rest = conn.execute(
            sa.select(currents_batches.c.claimed_by).where(
                currents_batches.c.state == queue.BatchState.PENDING
            )
        ).all()
    assert len(rest) == 50 and all(r.claimed_by is None for r in rest)
    deadline = time.monotonic() + 30
    while live(runtime.engine):
        assert time.monotonic() < deadline
        sender.run_once()
    assert sorted(mp.message_ids().elements()) == sorted(e["id"] for e in events)
    assert mp.rejected == []


def test_a_leased_batch_is_never_joined_even_after_a_crash_released_it(make_client, mp):
    """Later events join a user's batch only while no sender ever leased it: once leased it
    may have been sent (a SIGKILL before the outcome was recorded), so its content and
    ``source_request_id`` stay as they are and the later events form the next batch."""
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    first, second = http_event(user="u"), http_event(user="u")
    post(client, [first])
    sender = make_sender(runtime)
    [claimed] = sender.claim(time.time())  # leased; then the process dies before sending
    with runtime.engine.begin() as conn:
        queue.release_all_claims(conn)  # what the next sending process does at start
    post(client, [second])
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                currents_batches.c.id, currents_batches.c.events, currents_batches.c.leases
            ).order_by(currents_batches.c.first_seq)
        ).all()
    assert [(r.id, r.events, r.leases) for r in rows] == [
        (claimed.id, 1, 1),
        (rows[1].id, 1, 0),
    ]
    third = http_event(user="u")
    post(client, [third])  # joins the second batch, never leased
    with runtime.engine.connect() as conn:
        events = sa.select(currents_batches.c.events).order_by(currents_batches.c.first_seq)
        assert conn.execute(events).scalars().all() == [1, 2]
        # The joined batch's body row is rewritten in place (same first_seq), with both events.
        b, d = currents_batches.c, currents_batch_bodies.c
        bodies = conn.execute(
            sa.select(b.first_seq, d.body)
            .join_from(currents_batches, currents_batch_bodies, d.first_seq == b.first_seq)
            .order_by(b.first_seq)
        ).all()
    assert len(bodies) == 2
    assert first["id"].encode() in bodies[0].body
    assert second["id"].encode() in bodies[1].body and third["id"].encode() in bodies[1].body
    drain(sender, runtime.engine)
    assert mp.order_by_user()["u"] == [first["id"], second["id"], third["id"]]
    assert mp.delivered_twice() == [] and mp.rejected == []


def test_concurrent_intakes_beside_a_sender_deliver_each_event_once_in_order(make_client, mp):
    """Requests of the same users accepted at once (each forming and joining batches in its
    transaction) while a sender leases and sends: each event once, a request's events in their
    order per user, and no user with two batches in flight."""
    client = make_client(**currents_settings(mp.url))
    runtime = client.application.extensions["audience_sync"]
    requests_ = [[http_event(user=f"u{(n + k) % 6}") for n in range(30)] for k in range(24)]
    sender = make_sender(runtime)
    stop = threading.Event()

    def send():
        while not stop.is_set():
            if not sender.run_once():
                time.sleep(0.005)

    def intake(part):
        local = client.application.test_client()
        for events in part:
            response = local.post("/currents", json={"events": events}, headers=bearer())
            assert response.status_code == 200, response.get_json()

    threads = [threading.Thread(target=send)] + [
        threading.Thread(target=intake, args=(requests_[k::3],)) for k in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    wait_for(lambda: live(runtime.engine) == 0, timeout_s=60)
    stop.set()
    threads[0].join()
    events = [e for r in requests_ for e in r]
    assert sorted(mp.message_ids().elements()) == sorted(e["id"] for e in events)
    assert mp.duplicate_batches == 0 and mp.rejected == []
    order = mp.order_by_user()
    for events in requests_:
        for user in {e["user"]["external_user_id"] for e in events}:
            mine = [e["id"] for e in events if e["user"]["external_user_id"] == user]
            positions = [order[user].index(i) for i in mine]
            assert positions == sorted(positions)
