"""BrazeClient, build_requests, classify_response and RateBudget over real HTTP (FakeBraze).

The last test is a miniature sender: it shows the four pieces compose into a loop that reaches
Braze's desired state under 429s, 5xx, dropped connections and item errors, with no two writes
for one user in flight.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.outcomes import Kind, classify_response
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.braze.requests import build_requests
from tests.fakes.braze_server import FakeBraze

KEY = "fake-rest-key"


def body_of(*objects: dict) -> bytes:
    return json.dumps({"attributes": list(objects)}, separators=(",", ":")).encode()


@pytest.fixture
def client():
    with BrazeClient(timeout_s=5) as c:
        yield c


def test_body_just_under_the_byte_limit_is_accepted():
    with FakeBraze(api_keys={KEY}, max_bytes=2000) as braze, BrazeClient() as client:
        objects = [{"external_id": f"u{i}", "pad": "x" * 150} for i in range(40)]
        requests_ = build_requests(objects, max_objects=75, max_bytes=2000)
        assert len(requests_) > 1
        for r in requests_:
            assert client.track(braze.url, KEY, r.body).status == 201
        assert len(braze.users) == 40
        assert max(braze.request_sizes) < 2000


def test_per_object_errors_map_back_through_the_classifier(client):
    with FakeBraze(api_keys={KEY}, blacklisted_ids={"bad"}) as braze:
        response = client.track(
            braze.url,
            KEY,
            body_of(
                {"external_id": "ok", "a": 1},
                {"external_id": "bad", "a": 1},
                {"a": 1},
                {"external_id": "x" * 988, "a": 1},
            ),
        )
        assert response.status == 201
        outcome = classify_response(response, sent=4, now=0)
        assert outcome.kind == Kind.PARTIAL
        assert {i: o.reason for i, o in outcome.per_object.items()} == {
            1: "blacklisted_external_id",
            2: "missing_identifier",
            3: "external_id_too_large",
        }
        assert all(o.permanent for o in outcome.per_object.values())
        assert set(braze.users) == {"ok"}
        assert braze.datapoints == 1


def test_dropped_connection_is_status_none_in_the_client(client):
    with FakeBraze(api_keys={KEY}, rate_drop=1.0) as braze:
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
        assert response.status is None
        assert response.error == "connection_error"
        assert classify_response(response, sent=1, now=0).kind == Kind.RETRY_ALL
        assert braze.users == {}
        braze.configure(rate_drop=0.0, rate_drop_after_apply=1.0)
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
        assert response.status is None
        assert braze.users == {"u": {"a": 1}}
        assert braze.status_counts["drop"] == 1
        assert braze.status_counts["drop_after_apply"] == 1
        # The pooled client recovers on the next request.
        braze.configure(rate_drop_after_apply=0.0)
        assert client.track(braze.url, KEY, body_of({"external_id": "u", "a": 2})).status == 201
        assert braze.requests == 3


def test_rate_budget_and_fake_agree_on_the_window(client):
    """The client-side budget keeps a real run within the server-observed 1-second window."""
    import time

    budget = RateBudget(20)
    with FakeBraze(api_keys={KEY}) as braze:
        for i in range(50):
            wait = budget.reserve(KEY)
            if wait:
                time.sleep(wait)
            client.track(braze.url, KEY, body_of({"external_id": f"u{i}"}))
        assert braze.max_requests_in_window(1.0) <= 21  # one of slack for arrival jitter


def test_slow_answer_is_a_timeout():
    with FakeBraze(api_keys={KEY}, delay_s=1.0) as braze, BrazeClient(timeout_s=0.2) as client:
        response = client.track(braze.url, KEY, body_of({"external_id": "u", "a": 1}))
    assert response.status is None
    assert response.error == "timeout"
    assert classify_response(response, sent=1, now=0).reason == "timeout"


def test_wrong_path_is_a_configuration_error(client):
    with FakeBraze(api_keys={KEY}) as braze:
        response = client.track(braze.url + "/nope", KEY, body_of({"external_id": "u"}))
    assert response.status == 404
    assert classify_response(response, sent=1, now=0).kind == Kind.CONFIG_ERROR


def test_mini_sender_converges_under_faults_without_overlapping_writes():
    """Send 600 users through 4 threads until every one is acknowledged or given up."""
    desired = {
        f"user-{i:04d}": {
            "external_id": f"user-{i:04d}",
            "SegmentMembership": f"'{i % 7}'",
            "SegmentMembershipArray": {"add": [str(i % 7)]},
        }
        for i in range(600)
    }
    desired["user-0013"]["external_id"] = "blocked"
    blocked = {"blocked": desired.pop("user-0013")}
    faults = {
        "rate_429": 0.1,
        "rate_5xx": 0.05,
        "rate_5xx_after_apply": 0.03,
        "rate_drop": 0.03,
        "rate_drop_after_apply": 0.03,
        "rate_item_error": 0.05,
    }
    pending = dict(desired) | blocked
    gave_up: dict[str, str] = {}
    lock = threading.Lock()
    in_flight: set[str] = set()
    budget = RateBudget(200)
    kinds: dict[str, int] = {}

    def claim(n: int) -> list[dict]:
        # One writer per user: take only users not already in flight (SPEC §5.4).
        with lock:
            batch = [obj for eid, obj in pending.items() if eid not in in_flight][:n]
            in_flight.update(obj["external_id"] for obj in batch)
            return batch

    def finish(objs: list[dict], done: set[str], permanent: dict[str, str]) -> None:
        with lock:
            for obj in objs:
                eid = obj["external_id"]
                in_flight.discard(eid)
                if eid in done:
                    pending.pop(eid, None)
                if eid in permanent:
                    pending.pop(eid, None)
                    gave_up[eid] = permanent[eid]

    def worker(client: BrazeClient, url: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            objs = claim(75)
            if not objs:
                with lock:
                    if not pending:
                        return
                time.sleep(0.01)
                continue
            (request,) = build_requests(objs, max_objects=75, max_bytes=4_000_000)
            wait = budget.reserve(KEY)
            if wait:
                time.sleep(wait)
            response = client.track(url, KEY, request.body)
            budget.observe(KEY, response.headers)
            outcome = classify_response(response, sent=request.count, now=time.time())
            with lock:
                kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
            done: set[str] = set()
            permanent: dict[str, str] = {}
            if outcome.kind in (Kind.ACCEPTED, Kind.PARTIAL):
                for position, index in enumerate(request.indices):
                    eid = objs[index]["external_id"]
                    failed = outcome.per_object.get(position)
                    if failed is None:
                        done.add(eid)
                    elif failed.permanent:
                        permanent[eid] = failed.reason
            elif outcome.kind == Kind.RATE_LIMITED:
                budget.pause(KEY, outcome.retry_at)
            else:
                assert outcome.kind == Kind.RETRY_ALL, outcome
            finish(objs, done, permanent)

    with FakeBraze(api_keys={KEY}, seed=11, blacklisted_ids={"blocked"}, **faults) as braze:
        with BrazeClient(timeout_s=5, pool_maxsize=4) as client:
            threads = [threading.Thread(target=worker, args=(client, braze.url)) for _ in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert pending == {}
        assert gave_up == {"blocked": "blacklisted_external_id"}
        assert braze.violations == []
        assert set(braze.users) == set(desired)
        for eid, obj in desired.items():
            assert braze.users[eid] == {
                "SegmentMembership": obj["SegmentMembership"],
                "SegmentMembershipArray": obj["SegmentMembershipArray"]["add"],
            }
        # The faults really happened.
        assert kinds.get(Kind.RATE_LIMITED, 0) > 0
        assert kinds.get(Kind.RETRY_ALL, 0) > 0
        assert kinds.get(Kind.PARTIAL, 0) > 0
