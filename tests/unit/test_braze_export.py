"""The /users/export/ids client: packing, classification, budget, 429 (SPEC §7)."""

from __future__ import annotations

import json

import pytest
import responses

from audience_sync.braze.client import BrazeClient, TrackResponse
from audience_sync.braze.export import (
    FIELDS_TO_EXPORT,
    Exporter,
    ExportKind,
    chunk_ids,
    classify_export_response,
)

URL = "https://rest.iad-01.braze.com"


def test_chunks_hold_at_most_50_distinct_ids():
    ids = [f"u{n}" for n in range(120)] + ["u0"]
    chunks = list(chunk_ids(ids))
    assert [len(c) for c in chunks] == [50, 50, 20]


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        pytest.param(
            TrackResponse(status=None, error="timeout"), ExportKind.TRANSIENT, id="timeout"
        ),
        pytest.param(TrackResponse(status=503), ExportKind.TRANSIENT, id="5xx"),
        pytest.param(TrackResponse(status=429), ExportKind.RATE_LIMITED, id="429"),
        pytest.param(TrackResponse(status=401), ExportKind.REFUSED, id="401"),
        pytest.param(
            TrackResponse(status=400, body={"message": "x"}), ExportKind.BAD_REQUEST, id="400"
        ),
        pytest.param(
            TrackResponse(status=200, body={"message": "success", "users": [], "dry_run": True}),
            ExportKind.DRY_RUN,
            id="dry-run",
        ),
        pytest.param(
            TrackResponse(status=201, body={"message": "success"}),
            ExportKind.BAD_REQUEST,
            id="no-users",
        ),
    ],
)
def test_classification(response, kind):
    assert classify_export_response(response, requested=["a"], now=0).kind is kind


def test_users_found_and_missing():
    body = {
        "message": "success",
        "users": [
            {"external_id": "a", "custom_attributes": {"In X": True}, "email": "a@x.io"},
            {"external_id": "stranger"},
        ],
        "invalid_user_ids": ["b"],
    }
    outcome = classify_export_response(
        TrackResponse(status=201, body=body), requested=["a", "b", "c"], now=0
    )
    assert outcome.kind is ExportKind.OK
    assert outcome.users["a"].custom_attributes == {"In X": True}
    assert outcome.users["a"].email == "a@x.io"
    assert outcome.missing == ("b", "c")


def test_429_retry_after_header_sets_the_pause():
    response = TrackResponse(status=429, headers={"x-ratelimit-retry-after": "7"})
    assert classify_export_response(response, requested=[], now=100).retry_at == 107


@responses.activate
def test_exporter_sends_50_per_request_with_the_fields_and_resends_after_429():
    seen = []

    def answer(request):
        payload = json.loads(request.body)
        seen.append(payload)
        if len(seen) == 1:
            return (429, {"X-Ratelimit-Retry-After": "0"}, json.dumps({"message": "slow"}))
        users = [{"external_id": e, "custom_attributes": {}} for e in payload["external_ids"]]
        return (201, {}, json.dumps({"message": "success", "users": users}))

    responses.add_callback(responses.POST, f"{URL}/users/export/ids", callback=answer)
    with BrazeClient(timeout_s=5) as client:
        result = Exporter(client, requests_per_minute=6000).export(
            URL, "key", [f"u{n}" for n in range(60)]
        )
    assert result.kind is ExportKind.OK
    assert len(result.users) == 60
    assert result.unread == ()
    assert [len(p["external_ids"]) for p in seen] == [50, 50, 10]
    assert all(p["fields_to_export"] == list(FIELDS_TO_EXPORT) for p in seen)
    assert result.requests == 3


@responses.activate
def test_exporter_stops_at_a_refused_key():
    responses.add(responses.POST, f"{URL}/users/export/ids", status=401, json={"message": "no"})
    with BrazeClient(timeout_s=5) as client:
        result = Exporter(client, requests_per_minute=6000).export(
            URL, "key", [f"u{n}" for n in range(120)]
        )
    assert result.kind is ExportKind.REFUSED
    assert len(result.unread) == 120
    assert result.requests == 1
