"""BrazeClient against ``responses``: exact requests, no exceptions out, dry run."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import requests
import responses
from responses import matchers

from audience_sync.braze.client import BrazeClient, TrackResponse

ENDPOINT = "https://rest.iad-01.braze.com"
KEY = "rest-key-123-secret"
BODY = b'{"attributes":[{"external_id":"user-42","SegmentMembership":"\'11034\'"}]}'


@pytest.fixture
def client():
    with BrazeClient(timeout_s=5) as c:
        yield c


@responses.activate(assert_all_requests_are_fired=True)
@pytest.mark.parametrize("endpoint", [ENDPOINT, ENDPOINT + "/"], ids=["bare", "trailing-slash"])
def test_track_posts_exact_request(client, endpoint):
    responses.post(
        f"{ENDPOINT}/users/track",
        json={"message": "success", "attributes_processed": 1},
        status=201,
        headers={"X-RateLimit-Remaining": "2999", "X-RateLimit-Reset": "2"},
        match=[
            matchers.header_matcher(
                {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            ),
            matchers.json_params_matcher(json.loads(BODY)),
        ],
    )
    response = client.track(endpoint, KEY, BODY)
    assert response.status == 201
    assert response.body == {"message": "success", "attributes_processed": 1}
    assert response.error is None
    assert response.headers["x-ratelimit-remaining"] == "2999"
    assert "X-RateLimit-Remaining" not in response.headers
    assert response.elapsed_s >= 0
    sent = responses.calls[0].request
    assert sent.url == f"{ENDPOINT}/users/track"
    assert sent.body == BODY


@responses.activate(assert_all_requests_are_fired=True)
def test_error_statuses_come_back_as_responses(client):
    responses.post(f"{ENDPOINT}/users/track", json={"message": "Invalid API key"}, status=401)
    response = client.track(ENDPOINT, KEY, BODY)
    assert (response.status, response.body, response.error) == (
        401,
        {"message": "Invalid API key"},
        None,
    )


@responses.activate
def test_non_json_body_is_none(client):
    responses.post(f"{ENDPOINT}/users/track", body="<html>bad gateway</html>", status=502)
    response = client.track(ENDPOINT, KEY, BODY)
    assert response.status == 502
    assert response.body is None


@responses.activate
@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (requests.ConnectionError("refused"), "connection_error"),
        (requests.exceptions.ChunkedEncodingError("dropped"), "connection_error"),
        (requests.ReadTimeout("slow"), "timeout"),
        (requests.ConnectTimeout("slow"), "timeout"),
        (requests.exceptions.InvalidURL("bad"), "invalid_url"),
    ],
    ids=["connection", "dropped-mid-body", "read-timeout", "connect-timeout", "invalid-url"],
)
def test_transport_failures_are_status_none_never_raised(client, exc, error):
    responses.post(f"{ENDPOINT}/users/track", body=exc)
    response = client.track(ENDPOINT, KEY, BODY)
    assert response == TrackResponse(
        status=None, headers=response.headers, body=None, elapsed_s=response.elapsed_s, error=error
    )
    assert response.status is None
    assert response.error == error


def test_unreachable_host_is_connection_error():
    # Port 9 on loopback (discard) is closed on any sane test machine: connection refused.
    with BrazeClient(timeout_s=2) as client:
        response = client.track("http://127.0.0.1:9", KEY, BODY)
    assert response.status is None
    assert response.error == "connection_error"


@responses.activate(assert_all_requests_are_fired=True)
def test_no_redirect_is_followed(client):
    responses.post(
        f"{ENDPOINT}/users/track", status=301, headers={"Location": "https://elsewhere/"}
    )
    response = client.track(ENDPOINT, KEY, BODY)
    assert response.status == 301
    assert len(responses.calls) == 1


@responses.activate(assert_all_requests_are_fired=True)
def test_export_ids_posts_exact_request(client):
    responses.post(
        f"{ENDPOINT}/users/export/ids",
        json={"users": [], "message": "success"},
        status=201,
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {KEY}"}),
            matchers.json_params_matcher(
                {"external_ids": ["a", "b"], "fields_to_export": ["custom_attributes", "email"]}
            ),
        ],
    )
    response = client.export_ids(ENDPOINT + "/", KEY, ["a", "b"], ["custom_attributes", "email"])
    assert response.status == 201
    assert response.body == {"users": [], "message": "success"}


def test_session_has_pooled_adapter_without_retries():
    client = BrazeClient(pool_maxsize=32)
    adapter = client.session.get_adapter("https://rest.iad-01.braze.com")
    assert adapter._pool_maxsize == 32
    assert adapter.max_retries.total == 0
    client.close()


@responses.activate
def test_dry_run_writes_lines_and_sends_nothing(tmp_path):
    path = tmp_path / "nested" / "dir" / "braze.jsonl"
    client = BrazeClient(dry_run=True, dry_run_path=str(path))
    first = client.track(ENDPOINT, KEY, BODY)
    second = client.track("https://rest.fra-01.braze.eu", KEY, b'{"attributes":[]}')
    assert len(responses.calls) == 0
    assert first.status == second.status == 201
    assert first.body == {"message": "success"}
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["endpoint"] for line in lines] == [ENDPOINT, "https://rest.fra-01.braze.eu"]
    assert lines[0]["body"] == json.loads(BODY)
    assert set(lines[0]) == {"ts", "endpoint", "body"}
    assert KEY not in path.read_text()


def test_dry_run_is_thread_safe(tmp_path):
    path = tmp_path / "braze.jsonl"
    client = BrazeClient(dry_run=True, dry_run_path=str(path))
    body = json.dumps({"attributes": [{"external_id": "u", "pad": "x" * 5000}]}).encode()

    def worker():
        for _ in range(50):
            client.track(ENDPOINT, KEY, body)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["body"]["attributes"][0]["external_id"] == "u" for line in lines)


def test_dry_run_needs_a_path():
    with pytest.raises(ValueError):
        BrazeClient(dry_run=True)


def test_dry_run_export_observes_nothing(tmp_path):
    client = BrazeClient(dry_run=True, dry_run_path=str(tmp_path / "x.jsonl"))
    response = client.export_ids(ENDPOINT, KEY, ["a"], ["custom_attributes"])
    assert response.body["dry_run"] is True
    assert response.body["users"] == []


@responses.activate
def test_key_never_logged(client, caplog):
    responses.post(f"{ENDPOINT}/users/track", body=requests.ConnectionError(f"boom {KEY}"))
    with caplog.at_level(logging.DEBUG):
        client.track(ENDPOINT, KEY, BODY)
    assert caplog.records
    for record in caplog.records:
        assert KEY not in record.getMessage()
        assert KEY not in str(vars(record))


def test_environment_is_read_once_without_proxies(monkeypatch):
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")
    client = BrazeClient()
    assert client.session.trust_env is False
    assert client.session.verify == "/etc/ssl/custom.pem"


def test_proxy_environment_keeps_per_request_lookup(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    client = BrazeClient()
    assert client.session.trust_env is True
