"""``POST /currents`` as Braze's Custom HTTP connector uses it (SPEC §6.1)."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_sync.store import currents as queue
from audience_sync.store.counters import totals
from audience_sync.store.schema import currents_batches, currents_dedup, metadata
from tests.currents_support import (
    CURRENTS_TOKEN,
    bearer,
    currents_settings,
    http_event,
    http_samples,
    waiting_events,
    with_fresh_id,
)

URL = "http://127.0.0.1:9"


@pytest.fixture
def cclient(make_client):
    return make_client(**currents_settings(URL))


@pytest.fixture
def cengine(cclient):
    return cclient.application.extensions["audience_sync"].engine


def post(client, events, headers=None, **kwargs):
    body = json.dumps({"events": events}).encode()
    return client.post("/currents", data=body, headers=headers or bearer(), **kwargs)


def assert_error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == status
    return body


def counts(engine):
    with engine.connect() as conn:
        return {r: n for (s, r), n in totals(conn, scope="currents").items()}


def table_counts(engine):
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in metadata.sorted_tables
        }


def queued_rows(engine):
    return waiting_events(engine)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Token {CURRENTS_TOKEN}"},
        {"Authorization": CURRENTS_TOKEN},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "other-scheme", "bare", "empty"],
)
def test_bearer_token_is_checked_first_even_for_an_empty_batch(cclient, cengine, headers):
    before = table_counts(cengine)
    for body in (b'{"events": []}', b"not json", b"x" * 10_000_000):
        response = cclient.post("/currents", data=body, headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert table_counts(cengine) == before


def test_no_configured_token_refuses_all(make_client):
    client = make_client(**currents_settings(URL, currents__tokens=[]))
    assert_error(post(client, [], headers={"Authorization": "Bearer "}), 401)


def test_every_custom_http_sample_is_accepted_and_queued_durably(cclient, cengine):
    samples = [with_fresh_id(e) for _, e in http_samples()]
    response = post(cclient, samples)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["received"] == len(samples)
    assert body["queued"] + body["held"] + sum(body["skipped"].values()) == len(samples)
    assert set(body["skipped"]) == {"not_exported"}
    rows = queued_rows(cengine)
    assert len(rows) == body["queued"]
    assert {r.state for r in rows} == {"batched"}  # formed at once, in the same transaction
    # Push events go to the feed of their platform, email and the like to unbound.
    by_type = {r.event["data"].get("event_name"): r.feed for r in rows}
    assert by_type["Email Opens"] == "unbound"
    assert by_type["Push Notification Sends"] == "android"
    c = counts(cengine)
    assert c["received"] == len(samples) and c["queued"] == body["queued"]


def test_a_bad_single_event_is_skipped_and_counted(cclient, cengine):
    good = http_event()
    bad = [
        {"id": "x", "time": 1},
        {"event_type": "x", "time": 1},
        {"id": "y", "event_type": "x"},
        "text",
        None,
        5,
    ]
    response = post(cclient, [*bad, good])
    assert response.status_code == 200
    assert response.get_json()["skipped"] == {"invalid_event": len(bad)}
    assert [r.event_id for r in queued_rows(cengine)] == [good["id"]]
    assert counts(cengine)["invalid_event"] == len(bad)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "_body"),
        (b"\xff\xfe", "_body"),
        (b"[]", "_body"),
        (b'"events"', "_body"),
        (b"{}", "events"),
        (b'{"events": {}}', "events"),
        (b'{"events": null}', "events"),
        (b'{"events": NaN}', "_body"),
    ],
    ids=[
        "invalid",
        "binary",
        "array",
        "string",
        "no-events",
        "events-object",
        "events-null",
        "nan",
    ],
)
def test_400_only_for_a_malformed_batch(cclient, cengine, body, field):
    before = table_counts(cengine)
    response = cclient.post("/currents", data=body, headers=bearer())
    assert field in assert_error(response, 400)["errors"]
    assert table_counts(cengine) == before


def test_413_above_the_body_limit_with_the_json_shape(make_client):
    client = make_client(**currents_settings(URL, currents__max_body_bytes=2000))
    events = [http_event() for _ in range(30)]
    assert_error(post(client, events), 413)
    assert post(client, events[:2]).status_code == 200


def test_429_with_retry_after_over_the_backlog_bound(make_client):
    client = make_client(**currents_settings(URL, currents__max_backlog=3))
    assert post(client, [http_event() for _ in range(3)]).status_code == 200
    time.sleep(1.1)  # the backlog count is reused for a second
    response = post(client, [http_event()])
    assert_error(response, 429)
    assert int(response.headers["Retry-After"]) > 0


def test_duplicates_by_id_are_dropped_and_counted(cclient, cengine):
    event = http_event()
    assert post(cclient, [event, event]).get_json()["skipped"] == {"duplicate": 1}
    assert post(cclient, [event]).get_json()["skipped"] == {"duplicate": 1}
    assert len(queued_rows(cengine)) == 1
    assert counts(cengine)["duplicate"] == 2


def test_a_duplicate_past_the_window_is_new_work(make_client):
    client = make_client(**currents_settings(URL, currents__dedup_window_s=1))
    engine = client.application.extensions["audience_sync"].engine
    event = http_event()
    post(client, [event])
    with engine.begin() as conn:
        conn.execute(sa.update(currents_dedup).values(seen_at=time.time() - 10))
    assert post(client, [event]).get_json()["queued"] == 1


def test_not_exported_and_no_external_user_id_are_counted(cclient, cengine):
    response = post(cclient, [http_event("users.behaviors.Purchase"), http_event(user=None)])
    assert response.get_json()["skipped"] == {"not_exported": 1, "no_external_user_id": 1}
    assert queued_rows(cengine) == []


def test_an_event_without_a_feed_is_held_never_dropped(make_client):
    client = make_client(
        **currents_settings(URL, feeds={"ios": {"key": "k", "secret": "s", "platform": "ios"}})
    )
    engine = client.application.extensions["audience_sync"].engine
    response = post(client, [http_event()])
    assert response.get_json()["held"] == 1
    rows = queued_rows(engine)
    assert [(r.state, r.feed, r.reason) for r in rows] == [("held", None, "no_feed")]
    with engine.connect() as conn:
        status = {s.name: s for s in queue.feed_status(conn, ["ios"])}
    assert status["(no feed)"].backlog == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.uuids().map(str),
        "event_type": json_values
        | st.sampled_from(["users.messages.email.Open", "users.behaviors.Uninstall"]),
        "time": json_values,
        "time_ms": json_values,
        "user": json_values
        | st.fixed_dictionaries(
            {}, optional={"external_user_id": json_values, "device_id": json_values}
        ),
        "properties": json_values | st.dictionaries(st.text(max_size=10), json_values),
    },
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=json_values | st.fixed_dictionaries({"events": st.lists(event_like, max_size=5)}))
def test_fuzzed_currents_input_never_yields_5xx(cclient, cengine, body):
    before = table_counts(cengine)
    response = cclient.post("/currents", data=json.dumps(body).encode(), headers=bearer())
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert_error(response, response.status_code)
        assert table_counts(cengine) == before


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_never_yield_5xx(cclient, cengine, data):
    before = table_counts(cengine)
    response = cclient.post("/currents", data=data, headers=bearer())
    assert response.status_code < 500
    if response.status_code >= 400:
        assert table_counts(cengine) == before


def test_later_events_join_an_open_batch_only_while_it_is_small(cclient, cengine):
    """Joining rewrites the batch's body: a big open batch is left as it is."""
    post(cclient, [http_event(user="u")])
    post(cclient, [http_event(user="u")])
    assert [r.state for r in queued_rows(cengine)] == ["batched", "batched"]
    with cengine.connect() as conn:
        assert conn.execute(sa.select(currents_batches.c.events)).scalars().all() == [2]
    post(cclient, [http_event(user="v", pad="x" * 70_000)])
    post(cclient, [http_event(user="v")])
    with cengine.connect() as conn:
        sizes = conn.execute(
            sa.select(currents_batches.c.events)
            .where(currents_batches.c.external_user_id == "v")
            .order_by(currents_batches.c.first_seq)
        )
        assert sizes.scalars().all() == [1, 1]
