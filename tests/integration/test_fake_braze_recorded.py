"""FakeBraze answers the recorded Braze answers over real HTTP, and applies what Braze would.

Every case of ``tests/fixtures/braze_responses/`` is queued on one FakeBraze and sent by the real
``BrazeClient``: the verdicts equal the recorded ones, and an object is applied at the fake
exactly when Braze would have (a 2xx applies every object no indexed error names), so no
acknowledged user is missing and no refused one is applied.
"""

from __future__ import annotations

import json

import pytest

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.outcomes import classify_response
from tests.braze_responses import load_cases, notation
from tests.fakes.braze_server import Canned, FakeBraze

KEY = "fake-rest-key"
CASES = load_cases()


@pytest.fixture(scope="module")
def braze():
    with FakeBraze(api_keys={KEY}) as fake:
        yield fake


def test_every_recorded_answer_through_the_fake(braze):
    with BrazeClient(timeout_s=5) as client:
        for case in CASES:
            try:
                body = json.loads(case.content)
            except ValueError:
                body = case.content
            canned = Canned(status=case.status, body=body, headers=case.headers)
            braze.answer_next(canned)
            ids = [f"{case.id}-{i}" for i in range(case.sent)]
            objects = [{"external_id": eid, "In Ibiza Dreamers": True} for eid in ids]
            response = client.track(braze.url, KEY, json.dumps({"attributes": objects}).encode())
            outcome = classify_response(response, sent=case.sent, now=0.0)
            assert notation(outcome, case.sent) == case.expect, case.id
            applied = {i for i, eid in enumerate(ids) if eid in braze.users}
            assert applied == {i for i in range(case.sent) if canned.applies(i)}, case.id
            acked = {i for i, verdict in enumerate(case.expect) if verdict == "ack"}
            assert acked <= applied, case.id
    assert braze.canned_left == 0


def test_object_error_refuses_the_chosen_objects_on_every_request(braze):
    bad = "not-an-email"
    braze.configure(
        object_error=lambda obj: (
            {"type": "The value provided for the 'email' field is not a valid email."}
            if obj.get("email") == bad
            else None
        )
    )
    try:
        with BrazeClient(timeout_s=5) as client:
            body = {
                "attributes": [
                    {"external_id": "oe-1", "email": "a@example.com"},
                    {"external_id": "oe-2", "email": bad, "In Ibiza Dreamers": True},
                ]
            }
            response = client.track(braze.url, KEY, json.dumps(body).encode())
        outcome = classify_response(response, sent=2, now=0.0)
        assert notation(outcome, 2) == ("ack", "drop:email:invalid_email")
        assert "oe-1" in braze.users and "oe-2" not in braze.users
        assert braze.received_objects[-1]["email"] == bad
    finally:
        braze.configure(object_error=None)
