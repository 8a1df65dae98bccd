"""The admin API (SPEC §8) through the real app, on SQLite and PostgreSQL, after a real delivery
to a local Braze-compatible server."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from tests.fakes.braze_server import FakeBraze
from tests.integration.admin_helpers import (
    ACCOUNT,
    ADMIN_SETTINGS,
    ADMIN_TOKEN,
    AUDIENCES,
    BEARER,
    BLACKLISTED,
    REST_KEY,
    deliver,
    populate,
)

ROUTES = [
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/connections"),
    ("GET", f"/api/v1/connections/{ACCOUNT}"),
    ("GET", f"/api/v1/connections/{ACCOUNT}/audiences"),
    ("GET", f"/api/v1/connections/{ACCOUNT}/users/user-3"),
    ("GET", "/api/v1/deliveries?state=dead"),
    ("POST", "/api/v1/deliveries/replay"),
    ("GET", "/api/v1/currents/feeds"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/datapoints"),
    ("GET", "/api/v1/openapi.json"),
]
ROUTE_IDS = [f"{m} {p.split('?')[0]}" for m, p in ROUTES]


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}, blacklisted_ids=BLACKLISTED) as server:
        yield server


@pytest.fixture
def delivered(make_runtime, braze):
    """An app whose engine has delivered 20 users (two of them dead-lettered)."""
    from audience_sync import create_app

    runtime = make_runtime(**ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    populate(client, braze.url)
    deliver(runtime)
    return client


def call(client, method, path, headers=None, **kwargs):
    return client.open(path, method=method, headers=headers or {}, **kwargs)


def assert_error_shape(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == status
    return body


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Token {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "wrong-scheme", "longer", "empty"],
)
def test_every_route_refuses_a_missing_or_wrong_token(delivered, method, path, headers):
    response = call(delivered, method, path, headers, json={})
    body = assert_error_shape(response, 401)
    # The same answer whatever was wrong: no hint.
    assert body["message"] == "missing or invalid admin token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
def test_with_no_admin_token_configured_every_route_refuses_everyone(make_client, method, path):
    client = make_client()  # admin.token unset
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer None"}):
        assert_error_shape(call(client, method, path, headers, json={}), 401)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
def test_every_route_answers_the_right_token(delivered, method, path):
    response = call(delivered, method, path, BEARER, json={})
    assert response.status_code == 200, response.get_json()


def test_openapi_document_validates_and_lists_every_route(delivered):
    document = delivered.get("/api/v1/openapi.json", headers=BEARER).get_json()
    validate(document)
    paths = document["paths"]
    for route in (
        "/api/v1/status",
        "/api/v1/connections",
        "/api/v1/connections/{account_id}",
        "/api/v1/connections/{account_id}/audiences",
        "/api/v1/connections/{account_id}/users/{external_id}",
        "/api/v1/deliveries",
        "/api/v1/deliveries/replay",
        "/api/v1/currents/feeds",
        "/api/v1/jobs",
        "/api/v1/datapoints",
    ):
        assert route in paths, route
    assert "post" in paths["/api/v1/deliveries/replay"]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]


def test_status_counts_what_was_delivered(delivered):
    body = delivered.get("/api/v1/status", headers=BEARER).get_json()
    assert body["connections"] == {"active": 1}
    assert body["audiences"] == 3
    assert body["users"] == 20
    assert body["memberships"] == 40
    assert body["backlog"]["pending"] == 0
    assert body["backlog"]["dead"] == len(BLACKLISTED)
    assert body["failures_today"].get("dead_lettered") == len(BLACKLISTED)
    assert body["datapoints_today"] > 0
    assert body["datapoints_full_today"] > 0
    assert body["healthy"] is True
    assert any("dead-lettered" in p for p in body["problems"])


def test_a_no_op_churn_spends_nothing_but_counts_what_resending_would_have_cost(delivered, braze):
    from tests.integration.admin_helpers import FIREHOSE, connection_settings
    from tests.support import membership, post, profile

    before = delivered.get("/api/v1/status", headers=BEARER).get_json()
    churn = [(11038, AUDIENCES[11038], "add"), (11038, AUDIENCES[11038], "delete")]
    post(
        delivered,
        membership(ACCOUNT, [profile("user-2", churn)], **connection_settings(braze.url)),
        FIREHOSE,
    )
    deliver(delivered.application.extensions["audience_sync"])
    after = delivered.get("/api/v1/status", headers=BEARER).get_json()
    assert after["datapoints_today"] == before["datapoints_today"]
    # user-2 holds SegmentMembership, the array, "In Ibiza Dreamers", "In Aspiring
    # Athenians" and email: resending it whole costs 5 points.
    assert after["datapoints_full_today"] == before["datapoints_full_today"] + 5


def test_connections_mask_every_secret(delivered):
    page = delivered.get("/api/v1/connections", headers=BEARER).get_json()
    [conn] = page["items"]
    assert page["next_cursor"] is None
    assert conn["account_id"] == ACCOUNT
    assert conn["state"] == "active"
    assert conn["settings"]["restApiKey"] == "***"
    assert conn["settings"]["sendSegmentsAs"] == "array+string+per_segment"
    assert (conn["audiences"], conn["users"], conn["members"]) == (3, 20, 40)
    one = delivered.get(f"/api/v1/connections/{ACCOUNT}", headers=BEARER).get_json()
    assert one == conn


def test_audiences_show_members_and_datapoints(delivered):
    page = delivered.get(f"/api/v1/connections/{ACCOUNT}/audiences", headers=BEARER).get_json()
    by_id = {a["audience_id"]: a for a in page["items"]}
    assert set(by_id) == set(AUDIENCES)
    assert by_id[11036]["members"] == 20
    assert by_id[11037]["members"] + by_id[11038]["members"] == 20
    assert by_id[11036]["name"] == "Ibiza Dreamers"
    assert by_id[11036]["last_change_at"] is not None
    assert all(a["datapoints"] > 0 for a in page["items"])


def test_user_shows_desired_acknowledged_pending_and_outcomes(delivered):
    body = delivered.get(f"/api/v1/connections/{ACCOUNT}/users/user-3", headers=BEARER).get_json()
    assert set(body) >= {"desired", "acknowledged", "pending", "outcomes"}
    assert body["pending"] == {}
    assert body["desired"]["SegmentMembershipArray"] == ["11036", "11038"] or sorted(
        map(str, body["desired"]["SegmentMembershipArray"])
    ) == ["11036", "11038"]
    assert body["acknowledged"]["SegmentMembership"] == "'11036','11038'"
    assert body["desired"]["In Ibiza Dreamers"] is True
    assert body["outcomes"][0]["kind"] == "braze"
    assert body["outcomes"][0]["outcome"] == "accepted"


def test_a_dead_lettered_user_shows_its_pending_write(delivered):
    body = delivered.get(f"/api/v1/connections/{ACCOUNT}/users/user-0", headers=BEARER).get_json()
    assert body["acknowledged"] == {}
    assert body["pending"]["SegmentMembership"] == "'11036','11037'"
    assert any(o["kind"] == "outbox" and o["outcome"].startswith("dead") for o in body["outcomes"])


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/connections/{ACCOUNT + 1}",
        f"/api/v1/connections/{ACCOUNT}/users/nobody",
        f"/api/v1/connections/{ACCOUNT + 1}/audiences",
        "/api/v1/nothing-here",
    ],
    ids=["connection", "user", "audiences", "route"],
)
def test_unknown_things_are_404_in_the_error_shape(delivered, path):
    assert_error_shape(delivered.get(path, headers=BEARER), 404)


def test_dead_letters_listed_and_replayed(delivered):
    page = delivered.get("/api/v1/deliveries?state=dead", headers=BEARER).get_json()
    assert sorted(r["external_id"] for r in page["items"]) == sorted(BLACKLISTED)
    assert all(r["account_ids"] == [ACCOUNT] and r["last_reason"] for r in page["items"])
    response = delivered.post(
        "/api/v1/deliveries/replay", json={"account_id": ACCOUNT}, headers=BEARER
    )
    assert response.get_json() == {"requeued": len(BLACKLISTED)}
    assert delivered.get("/api/v1/deliveries?state=dead", headers=BEARER).get_json()["items"] == []
    pending = delivered.get("/api/v1/deliveries?state=pending", headers=BEARER).get_json()
    assert sorted(r["external_id"] for r in pending["items"]) == sorted(BLACKLISTED)
    again = delivered.post("/api/v1/deliveries/replay", json={}, headers=BEARER)
    assert again.get_json() == {"requeued": 0}


def test_replay_of_an_unknown_connection_requeues_nothing(delivered):
    response = delivered.post("/api/v1/deliveries/replay", json={"account_id": 999}, headers=BEARER)
    assert response.get_json() == {"requeued": 0}
    assert (
        len(delivered.get("/api/v1/deliveries?state=dead", headers=BEARER).get_json()["items"]) == 2
    )


def test_every_list_pages_with_a_cursor(delivered):
    seen, cursor = [], None
    while True:
        query = "?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = delivered.get(
            f"/api/v1/connections/{ACCOUNT}/audiences{query}", headers=BEARER
        ).get_json()
        seen += [a["audience_id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(AUDIENCES)

    rows, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = delivered.get(f"/api/v1/datapoints{query}", headers=BEARER).get_json()
        rows += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    full = delivered.get("/api/v1/datapoints?limit=500", headers=BEARER).get_json()["items"]
    assert rows == full and len(rows) >= 3

    dead = delivered.get("/api/v1/deliveries?state=dead&limit=1", headers=BEARER).get_json()
    second = delivered.get(
        f"/api/v1/deliveries?state=dead&limit=1&cursor={dead['next_cursor']}", headers=BEARER
    ).get_json()
    assert [dead["items"][0]["external_id"], second["items"][0]["external_id"]] == sorted(
        BLACKLISTED
    )
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("/api/v1/connections?limit=0", "limit"),
        ("/api/v1/connections?limit=100000", "limit"),
        ("/api/v1/connections?limit=abc", "limit"),
        ("/api/v1/connections?cursor=not-a-cursor", "cursor"),
        ("/api/v1/deliveries?state=nonsense", "state"),
        ("/api/v1/datapoints?from=yesterday", "from"),
    ],
    ids=["limit-0", "limit-huge", "limit-text", "cursor", "state", "date"],
)
def test_bad_query_arguments_are_400_naming_the_field(delivered, query, field):
    body = assert_error_shape(delivered.get(query, headers=BEARER), 400)
    assert field in str(body["errors"])


def test_a_cursor_of_another_list_is_refused(delivered):
    page = delivered.get("/api/v1/datapoints?limit=1", headers=BEARER).get_json()
    response = delivered.get(f"/api/v1/connections?cursor={page['next_cursor']}", headers=BEARER)
    assert_error_shape(response, 400)


@pytest.fixture
def delivered_with_runs(make_runtime, braze):
    """``delivered``, plus two recorded runs of the real ``prune`` job."""
    from audience_sync import create_app
    from audience_sync.jobs.registry import builtin_jobs
    from audience_sync.jobs.runner import run_job

    runtime = make_runtime(**ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    populate(client, braze.url)
    deliver(runtime)
    for _ in range(2):
        assert run_job(runtime, builtin_jobs()["prune"], holder="test", force=True) is not None
    return client


def test_job_runs_are_listed_newest_first_with_a_cursor(delivered_with_runs):
    page = delivered_with_runs.get("/api/v1/jobs?limit=1", headers=BEARER).get_json()
    assert [r["job"] for r in page["items"]] == ["prune"]
    assert page["items"][0]["state"] == "ok"
    rest = delivered_with_runs.get(
        f"/api/v1/jobs?limit=5&cursor={page['next_cursor']}", headers=BEARER
    ).get_json()
    assert [r["job"] for r in rest["items"]] == ["prune"]
    assert rest["items"][0]["id"] < page["items"][0]["id"]
    assert rest["next_cursor"] is None


def test_datapoints_filter_by_connection_and_day(delivered):
    rows = delivered.get(f"/api/v1/datapoints?account_id={ACCOUNT}", headers=BEARER).get_json()
    assert rows["items"] and all(r["account_id"] == ACCOUNT for r in rows["items"])
    none = delivered.get(f"/api/v1/datapoints?account_id={ACCOUNT + 5}", headers=BEARER)
    assert none.get_json()["items"] == []
    old = delivered.get("/api/v1/datapoints?to=2000-01-01", headers=BEARER).get_json()
    assert old["items"] == []


@pytest.mark.parametrize(
    ("ages_s", "expected"),
    [
        ([0.5, 30, 59.9], {59: 3}),  # this minute
        ([60.1, 119.9], {58: 2}),  # the minute before
        ([3599, 3600 * 2], {0: 1}),  # the first minute shown; older ones counted apart
    ],
    ids=["this-minute", "previous-minute", "edges"],
)
def test_minute_series_buckets_by_whole_minutes(runtime, ages_s, expected):
    from audience_sync.store import activity, outbox
    from audience_sync.store.schema import workspaces

    now = 1_800_000_000.0 + 59.95  # just before a minute boundary
    with runtime.engine.begin() as conn:
        conn.execute(
            workspaces.insert().values(id=1, endpoint="e", key_fingerprint="f", created_at=0)
        )
        for i, age in enumerate(ages_s):
            outbox.enqueue(conn, 1, [f"u{i}"], now=now - age)
    with runtime.engine.connect() as conn:
        series = activity.minute_series(conn, now=now)
    got = {i: n for i, n in enumerate(series.backlog_enqueued) if n}
    assert got == expected
    assert series.backlog_older == len(ages_s) - sum(expected.values())


def test_currents_feeds_show_state_backlog_and_age_never_credentials(make_runtime):
    """Events accepted on POST /currents wait in their feed's backlog (nothing sends them
    here); the feed list shows them with the oldest event's age, and no key or secret."""
    import json

    from audience_sync import create_app
    from tests.currents_support import FEEDS, bearer, currents_settings, http_event

    runtime = make_runtime(**ADMIN_SETTINGS, **currents_settings("http://127.0.0.1:9"))
    client = create_app(runtime=runtime).test_client()
    events = [http_event(user=f"user-{i}", platform="ios") for i in range(3)]
    events.append(http_event("users.messages.email.Send", user="user-9"))
    accepted = client.post("/currents", data=json.dumps({"events": events}), headers=bearer())
    assert accepted.status_code < 300, accepted.get_data(as_text=True)

    page = client.get("/api/v1/currents/feeds", headers=BEARER)
    assert page.status_code == 200
    feeds = {f["name"]: f for f in page.get_json()["items"]}
    assert set(feeds) >= set(FEEDS)
    assert feeds["ios"]["platform"] == "ios" and feeds["ios"]["backlog"] == 3
    assert feeds["unbound"]["backlog"] == 1
    assert feeds["ios"]["state"] == "active"
    assert feeds["ios"]["oldest_event_age_s"] is not None
    assert feeds["web"]["backlog"] == 0
    text = page.get_data(as_text=True)
    for feed in FEEDS.values():
        assert feed["key"] not in text and feed["secret"] not in text
