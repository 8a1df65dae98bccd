"""Feed routing and batch forming (SPEC §6.3, §6.4), from tables."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.core.currents.batching import (
    OpenBatch,
    QueuedEvent,
    plan_batches,
    source_request_id,
)
from audience_sync.core.currents.routing import Feed, credential_problem, route

FEEDS = (
    Feed(name="android", platform="android"),
    Feed(name="ios", platform="ios", app_ids=frozenset({"app-tv"})),
    Feed(name="unbound", platform="unbound"),
    Feed(name="web", platform="web"),
)


@pytest.mark.parametrize(
    ("app_id", "platform", "feeds", "expected"),
    [
        ("app-tv", "android", FEEDS, "ios"),
        (None, "ios", FEEDS, "ios"),
        (None, "Android", FEEDS, "android"),
        ("other-app", "web", FEEDS, "web"),
        (None, None, FEEDS, "unbound"),
        (None, "roku", FEEDS, "unbound"),
        (None, "ios", (Feed(name="unbound", platform="unbound"),), None),
        (None, None, (Feed(name="ios", platform="ios"),), None),
        (None, None, (), None),
    ],
    ids=[
        "app-id-first",
        "ios",
        "android-case",
        "unknown-app",
        "email-unbound",
        "other-platform",
        "no-ios-feed",
        "no-unbound-feed",
        "no-feeds",
    ],
)
def test_route(app_id, platform, feeds, expected):
    assert route(app_id, platform, feeds) == expected


def queued(seq, user="u", feed="f", envelope=None, size=10):
    env = envelope or {
        "user_identities": {"customerid": user},
        "device_info": {},
        "user_attributes": {},
    }
    event = {
        "event_type": "custom_event",
        "data": {
            "event_name": "X",
            "custom_event_type": "other",
            "timestamp_unixtime_ms": seq,
            "source_message_id": f"m{seq}",
            "custom_attributes": {"pad": "p" * size},
        },
    }
    return QueuedEvent(
        seq=seq,
        event_id=f"m{seq}",
        feed=feed,
        external_user_id=user,
        received_at=float(seq),
        envelope_json=json.dumps(env),
        event_json=json.dumps(event),
    )


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("key", "us1-0123456789abcdef", None),
        ("secret", "Ab3_-.~!@#$%^&*()+=[]{}|;'<>,?/ `\"", None),
        ("secret", "pass:word", None),
        ("key", "", "required"),
        ("secret", "", "required"),
        ("key", "us1-abc:def", "':'"),
        ("key", "us1-abc\n", "control characters"),
        ("secret", "s3cr3t\n", "control characters"),
        ("secret", "s3\r\nX-Injected: 1", "control characters"),
        ("secret", "tab\tinside", "control characters"),
        ("key", "nul\x00", "control characters"),
        ("secret", "del\x7f", "control characters"),
        ("secret", "c1\x85", "control characters"),
        ("secret", "caf\u00e9", None),
        ("key", "\u2028key", "Latin-1"),
        ("secret", "\u20ac", "Latin-1"),
    ],
    ids=[
        "key",
        "secret-punctuation",
        "colon-in-secret",
        "empty-key",
        "empty-secret",
        "colon-in-key",
        "newline-key",
        "newline-secret",
        "header-injection",
        "tab",
        "nul",
        "del",
        "c1-control",
        "latin-1",
        "line-separator",
        "euro-sign",
    ],
)
def test_feed_credentials_must_fit_a_basic_auth_header(field, value, problem):
    found = credential_problem(field, value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert not value or value not in found


def test_one_batch_per_user_and_feed_in_arrival_order():
    events = [queued(3, "b"), queued(1, "a"), queued(2, "b"), queued(4, "a", feed="g")]
    plan = plan_batches(events, environment="production")
    summary = [(b.feed, b.external_user_id, b.seqs) for b in plan.batches]
    assert summary == [("f", "a", (1,)), ("f", "b", (2, 3)), ("g", "a", (4,))]
    body = json.loads(plan.batches[1].body)
    assert body["schema_version"] == 2 and body["environment"] == "production"
    assert body["source_request_id"] == plan.batches[1].batch_id
    assert body["user_identities"] == {"customerid": "b"}
    assert [e["data"]["source_message_id"] for e in body["events"]] == ["m2", "m3"]


def test_a_changed_envelope_starts_a_new_batch_keeping_order():
    other = {
        "user_identities": {"customerid": "u", "email": "e@x"},
        "device_info": {},
        "user_attributes": {},
    }
    plan = plan_batches([queued(1), queued(2, envelope=other), queued(3)], environment="production")
    assert [b.seqs for b in plan.batches] == [(1,), (2,), (3,)]


def test_batches_stay_under_128_kb_and_oversized_events_are_rejected():
    events = [queued(n, size=30_000) for n in range(1, 10)] + [queued(10, size=200_000)]
    plan = plan_batches(events, environment="production")
    assert all(len(b.body) < 128 * 1024 for b in plan.batches)
    assert sum(len(b.seqs) for b in plan.batches) == 9
    assert [s for b in plan.batches for s in b.seqs] == list(range(1, 10))
    assert plan.rejected == ((10, "event_too_large"),)


def test_source_request_id_is_deterministic():
    first = plan_batches([queued(1), queued(2)], environment="production").batches[0]
    again = plan_batches([queued(2), queued(1)], environment="production").batches[0]
    assert first.batch_id == again.batch_id == source_request_id("f", 1, ["m1", "m2"])
    assert first.body == again.body
    assert source_request_id("g", 1, ["m1", "m2"]) != first.batch_id
    assert source_request_id("f", 7, ["m1", "m2"]) != first.batch_id  # re-queued later


def test_an_invalid_environment_is_caught_before_sending():
    plan = plan_batches([queued(1)], environment="staging")
    assert plan.batches == ()
    assert plan.rejected[0][1].startswith("invalid_batch: environment")


@settings(max_examples=200, deadline=None)
@given(
    spec=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),  # user
            st.sampled_from(["f", "g"]),  # feed
            st.booleans(),  # with an email identity (another envelope)
            st.integers(min_value=0, max_value=60_000),  # attribute padding
        ),
        max_size=40,
    )
)
def test_plans_keep_every_event_once_in_arrival_order_per_user(spec):
    events = []
    for seq, (user, feed, email, size) in enumerate(spec, start=1):
        identities = {"customerid": user, **({"email": f"{user}@x"} if email else {})}
        envelope = {"user_identities": identities, "device_info": {}, "user_attributes": {}}
        events.append(queued(seq, user=user, feed=feed, envelope=envelope, size=size))
    plan = plan_batches(list(reversed(events)), environment="production")
    placed = [s for b in plan.batches for s in b.seqs] + [s for s, _ in plan.rejected]
    assert sorted(placed) == list(range(1, len(spec) + 1))  # each event exactly once
    for batch in plan.batches:
        body = json.loads(batch.body)
        assert len(batch.body) < 128 * 1024
        assert {events[s - 1].external_user_id for s in batch.seqs} == {batch.external_user_id}
        assert {events[s - 1].feed for s in batch.seqs} == {batch.feed}
        assert list(batch.seqs) == sorted(batch.seqs)
        assert [e["data"]["source_message_id"] for e in body["events"]] == [
            f"m{s}" for s in batch.seqs
        ]
    for user in "abc":
        for feed in "fg":
            order = [
                s
                for b in plan.batches
                if (b.external_user_id, b.feed) == (user, feed)
                for s in b.seqs
            ]
            assert order == sorted(order)  # batches sorted by first_seq keep arrival order


def opened(batch):
    """A planned batch as it is stored, open to later events of its user."""
    return OpenBatch(
        batch_id=batch.batch_id,
        feed=batch.feed,
        external_user_id=batch.external_user_id,
        first_seq=batch.first_seq,
        event_ids=batch.event_ids,
        received_at=batch.received_at,
        body=batch.body,
    )


def test_later_events_join_their_users_open_batch_under_a_new_id():
    first = plan_batches([queued(1), queued(2)], environment="production").batches[0]
    plan = plan_batches(
        [queued(5), queued(6, user="v")],
        environment="production",
        open_batches={("f", "u"): opened(first)},
    )
    joined, fresh = plan.batches
    assert joined.extends == first.batch_id and fresh.extends is None
    assert (joined.first_seq, joined.seqs, joined.event_ids) == (1, (5,), ("m1", "m2", "m5"))
    assert joined.batch_id == source_request_id("f", 1, ["m1", "m2", "m5"]) != first.batch_id
    assert joined.received_at == first.received_at  # retention counts from the oldest event
    body = json.loads(joined.body)
    assert body["source_request_id"] == joined.batch_id
    assert [e["data"]["source_message_id"] for e in body["events"]] == ["m1", "m2", "m5"]
    # The same content planned at once gives the same batch.
    once = plan_batches([queued(1), queued(2), queued(5)], environment="production").batches[0]
    assert (once.batch_id, once.body) == (joined.batch_id, joined.body)


def test_an_open_batch_is_not_joined_across_an_envelope_change_or_the_size_limit():
    first = plan_batches([queued(1, size=60_000)], environment="production").batches[0]
    other = {
        "user_identities": {"customerid": "u", "email": "e@x"},
        "device_info": {},
        "user_attributes": {},
    }
    changed = plan_batches(
        [queued(2, envelope=other), queued(3)],
        environment="production",
        open_batches={("f", "u"): opened(first)},
    )
    assert [(b.extends, b.seqs) for b in changed.batches] == [(None, (2,)), (None, (3,))]
    too_big = plan_batches(
        [queued(2, size=72_000), queued(3)],
        environment="production",
        open_batches={("f", "u"): opened(first)},
    )
    assert [(b.extends, b.seqs) for b in too_big.batches] == [(None, (2, 3))]
    fits = plan_batches(
        [queued(2, size=30_000), queued(3, size=45_000)],
        environment="production",
        open_batches={("f", "u"): opened(first)},
    )
    assert [(b.extends, b.seqs) for b in fits.batches] == [(first.batch_id, (2,)), (None, (3,))]
    assert all(len(b.body) < 128 * 1024 for b in fits.batches)


def test_source_request_ids_sort_in_queue_order():
    ids = [source_request_id("f", seq, [f"m{seq}"]) for seq in (1, 2, 255, 256, 70_000, 2**40)]
    assert ids == sorted(ids)
    assert len({source_request_id("f", 3, ["a"]), source_request_id("f", 3, ["b"])}) == 2


def test_source_request_id_is_a_uuid_string():
    batch_id = source_request_id("f", 123_456, ["a", "b"])
    assert str(uuid.UUID(batch_id)) == batch_id
    assert batch_id.startswith("00000001-e240-")  # the position, big-endian
