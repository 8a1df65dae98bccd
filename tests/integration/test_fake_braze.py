"""FakeBraze over real HTTP: Braze semantics, validation, recording and fault injection.

Also the BrazeClient end to end against it: a dropped connection surfaces as ``status=None``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.outcomes import Kind, classify_response
from tests.fakes.braze_server import FakeBraze, datapoints_of

KEY = "fake-rest-key"
REPO = Path(__file__).resolve().parents[2]


def body_of(*objects: dict) -> bytes:
    return json.dumps({"attributes": list(objects)}, separators=(",", ":")).encode()


@pytest.fixture
def braze():
    with FakeBraze(api_keys={KEY}) as fake:
        yield fake


@pytest.fixture
def client():
    with BrazeClient(timeout_s=5) as c:
        yield c


def test_success_applies_attributes_and_sends_ratelimit_headers(braze, client):
    body = body_of(
        {
            "external_id": "u1",
            "SegmentMembership": "'11034','11036'",
            "SegmentMembershipArray": {"add": ["11034", "11036"]},
            "In Ibiza Dreamers": True,
            "email": "a@example.com",
            "push_tokens": [{"app_id": "app", "token": "tok"}],
        },
        {"external_id": "u2", "In Ibiza Dreamers": False},
    )
    response = client.track(braze.url, KEY, body)
    assert response.status == 201
    assert response.body == {"message": "success", "attributes_processed": 2}
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(
        response.headers
    )
    assert response.headers["x-ratelimit-remaining"] == "2999"
    assert braze.users["u1"] == {
        "SegmentMembership": "'11034','11036'",
        "SegmentMembershipArray": ["11034", "11036"],
        "In Ibiza Dreamers": True,
        "email": "a@example.com",
        "push_tokens": [{"app_id": "app", "token": "tok"}],
    }
    assert braze.users["u2"] == {"In Ibiza Dreamers": False}
    # 1 string + 2 array values + 1 boolean + 1 email + 0 push; then 1 boolean.
    assert braze.datapoints == 5 + 1
    assert braze.requests == 1
    assert braze.objects_per_request == [2]
    assert braze.request_sizes == [len(body)]


def test_array_add_remove_null_and_whole_array_semantics(braze, client):
    def send(obj):
        assert client.track(braze.url, KEY, body_of({"external_id": "u", **obj})).status == 201

    send({"arr": {"add": ["a", "b"]}, "s": "x"})
    send({"arr": {"add": ["b", "c"], "remove": ["a"]}})
    assert braze.users["u"]["arr"] == ["b", "c"]
    send({"arr": {"remove": ["zzz"]}, "s": None})
    assert braze.users["u"] == {"arr": ["b", "c"]}
    send({"arr": ["q"]})
    assert braze.users["u"]["arr"] == ["q"]
    send({"arr": None})
    assert braze.users["u"] == {}
    # 2+1, 2+1, 1+1 (null counts), 1 (whole array), 1 (null)
    assert braze.datapoints == 3 + 3 + 2 + 1 + 1


@pytest.mark.parametrize(
    ("obj", "points"),
    [
        ({"external_id": "u"}, 0),
        ({"external_id": "u", "_update_existing_only": True, "a": 1}, 1),
        ({"external_id": "u", "a": None}, 1),
        ({"external_id": "u", "arr": {"add": ["1", "2"], "remove": ["3"]}}, 3),
        ({"external_id": "u", "arr": ["1", "2", "3"]}, 1),
        ({"external_id": "u", "email": "e@x"}, 1),
        ({"external_id": "u", "push_tokens": [{"app_id": "a", "token": "t"}]}, 0),
    ],
)
def test_datapoint_rules(obj, points):
    assert datapoints_of(obj) == points


def test_update_existing_only_does_not_create_users(braze, client):
    response = client.track(
        braze.url,
        KEY,
        body_of(
            {"external_id": "new", "_update_existing_only": True, "a": 1},
            {"external_id": "old", "a": 1},
        ),
    )
    assert response.status == 201
    assert "new" not in braze.users
    client.track(
        braze.url, KEY, body_of({"external_id": "old", "_update_existing_only": True, "a": 2})
    )
    assert braze.users["old"] == {"a": 2}
    assert braze.notes["skipped_update_existing_only"] == 1


def test_wrong_key_and_auth_fail_are_401(braze, client):
    assert client.track(braze.url, "other-key", body_of({"external_id": "u"})).status == 401
    braze.configure(auth_fail=True)
    response = client.track(braze.url, KEY, body_of({"external_id": "u"}))
    assert response.status == 401
    assert classify_response(response, sent=1, now=0).kind == Kind.SUSPEND
    assert braze.users == {}


def test_validation_limits(braze, client):
    too_many = body_of(*({"external_id": f"u{i}"} for i in range(76)))
    response = client.track(braze.url, KEY, too_many)
    assert response.status == 400
    assert response.body["message"] == "Max Input Length Exceeded"
    assert classify_response(response, sent=76, now=0).kind == Kind.SPLIT

    big = body_of({"external_id": "u", "pad": "x" * 4_000_000})
    response = client.track(braze.url, KEY, big)
    assert response.status == 413
    assert braze.users == {}

    response = requests.post(
        braze.url + "/users/track",
        data=b'{"attributes":[{"external_id":"u"}]}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
        timeout=5,
    )
    assert response.status_code == 415


def test_item_error_is_retryable_and_not_applied(client):
    with FakeBraze(api_keys={KEY}, rate_item_error=1.0, seed=3) as braze:
        response = client.track(
            braze.url, KEY, body_of(*({"external_id": f"u{i}", "a": 1} for i in range(10)))
        )
        outcome = classify_response(response, sent=10, now=0)
        assert outcome.kind == Kind.PARTIAL
        ((index, failed),) = outcome.per_object.items()
        assert not failed.permanent
        assert f"u{index}" not in braze.users
        assert len(braze.users) == 9


def test_429_applies_nothing_and_says_when(client):
    with FakeBraze(api_keys={KEY}, rate_429=1.0) as braze:
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
        assert response.status == 429
        assert response.headers["x-ratelimit-retry-after"] == "1"
        outcome = classify_response(response, sent=1, now=1000.0)
        assert outcome.kind == Kind.RATE_LIMITED
        assert outcome.retry_at == 1001.0
        assert braze.users == {}
        braze.configure(rate_429=0.0)
        assert client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1})).status == 201


def test_5xx_applies_nothing_and_5xx_after_apply_applies(client):
    with FakeBraze(api_keys={KEY}, rate_5xx=1.0) as braze:
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
        assert response.status in (500, 502, 503)
        assert classify_response(response, sent=1, now=0).kind == Kind.RETRY_ALL
        assert braze.users == {}
        braze.configure(rate_5xx=0.0, rate_5xx_after_apply=1.0)
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
        assert response.status == 500
        assert braze.users == {"u": {"a": 1}}


def test_fault_rates_are_seeded_and_roughly_right(client):
    def run(seed):
        with FakeBraze(api_keys={KEY}, rate_429=0.3, seed=seed) as braze:
            return [
                client.track(braze.url, KEY, body_of({"external_id": "u", "a": i})).status
                for i in range(200)
            ]

    first, again = run(7), run(7)
    assert first == again
    assert 30 <= first.count(429) <= 90


def test_concurrent_writes_for_one_user_are_recorded_as_violations(client):
    with FakeBraze(api_keys={KEY}, delay_s=0.3) as braze:
        barrier = threading.Barrier(2)

        def send(obj):
            barrier.wait()
            client.track(braze.url, KEY, body_of(obj))

        threads = [
            threading.Thread(target=send, args=({"external_id": "same", "a": 1},)),
            threading.Thread(target=send, args=({"external_id": "same", "a": 2},)),
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(braze.violations) == 1
        assert braze.violations[0]["external_id"] == "same"
        assert braze.max_in_flight == 2


def test_concurrent_writes_for_different_users_are_not_violations(client):
    with FakeBraze(api_keys={KEY}, delay_s=0.2) as braze:
        threads = [
            threading.Thread(
                target=client.track,
                args=(braze.url, KEY, body_of({"external_id": f"u{i}", "a": 1})),
            )
            for i in range(4)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert braze.violations == []
        assert braze.max_in_flight >= 2


def test_sequential_writes_for_one_user_are_not_violations(braze, client):
    for i in range(20):
        assert client.track(braze.url, KEY, body_of({"external_id": "u", "a": i})).status == 201
    assert braze.violations == []


def test_export_ids_returns_custom_attributes_and_email(braze, client):
    client.track(
        braze.url,
        KEY,
        body_of(
            {
                "external_id": "u1",
                "SegmentMembershipArray": ["1"],
                "email": "a@x",
                "push_tokens": [{"app_id": "a", "token": "t"}],
            }
        ),
    )
    response = client.export_ids(braze.url, KEY, ["u1", "ghost"], ["custom_attributes", "email"])
    assert response.status == 201
    assert response.body == {
        "users": [
            {
                "external_id": "u1",
                "custom_attributes": {"SegmentMembershipArray": ["1"]},
                "email": "a@x",
            }
        ],
        "invalid_user_ids": ["ghost"],
        "message": "success",
    }
    assert client.export_ids(braze.url, "nope", ["u1"], []).status == 401


def test_timeline_and_window_counts(braze, client):
    for _ in range(5):
        client.track(braze.url, KEY, body_of({"external_id": "u"}))
    assert sum(braze.timeline.values()) == 5
    assert braze.max_requests_in_window(1.0) == 5
    stats = braze.stats()
    assert stats["requests"] == 5
    assert stats["violations"] == 0


def test_enforced_rate_limit_answers_429_past_the_window(client):
    with FakeBraze(
        api_keys={KEY}, enforce_rate_limit=True, ratelimit_limit=3, ratelimit_window_s=60
    ) as braze:
        statuses = [
            client.track(braze.url, KEY, body_of({"external_id": "u"})).status for _ in range(5)
        ]
        assert statuses == [201, 201, 201, 429, 429]


def test_state_endpoint_and_runtime_faults_over_http(braze):
    requests.post(
        braze.url + "/users/track",
        data=b'{"attributes":[{"external_id":"u","a":1}]}',
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=5,
    )
    state = requests.get(braze.url + "/_state", timeout=5).json()
    assert state["users"] == {"u": {"a": 1}}
    assert state["stats"]["requests"] == 1
    assert state["violations"] == []
    assert (
        requests.post(braze.url + "/_faults", json={"rate_429": 1.0}, timeout=5).status_code == 200
    )
    assert braze.rate_429 == 1.0
    assert requests.post(braze.url + "/_faults", json={"nope": 1}, timeout=5).status_code == 400


def test_standalone_process_serves_until_killed():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.braze_server", "--port", "0", "--api-key", KEY],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with BrazeClient(timeout_s=5) as client:
            assert client.track(url, KEY, body_of({"external_id": "u", "a": 1})).status == 201
        state = requests.get(url + "/_state", timeout=5).json()
        assert state["users"] == {"u": {"a": 1}}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
