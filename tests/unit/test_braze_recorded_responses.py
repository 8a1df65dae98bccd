"""Recorded Braze answers (peers' test suites, Braze's docs) through the real client.

Each answer of ``tests/fixtures/braze_responses/responses.json`` is served by ``responses`` to
``BrazeClient.track``; the client's ``TrackResponse`` goes through ``classify_response``, and the
verdict of every object must equal the recorded one. A property test then feeds the classifier
arbitrary statuses, headers and bodies (JSON or bytes, straight or through the client): it must
always answer, never raise.
"""

from __future__ import annotations

import json

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.outcomes import Kind, classify_response, classify_track_response
from tests.braze_responses import load_cases, load_sources, notation

ENDPOINT = "https://rest.iad-01.braze.com"
KEY = "rest-key"
NOW = 1_700_000_000.0
CASES = load_cases()


def body_for(sent: int) -> bytes:
    objects = [{"external_id": f"user-{i}", "SegmentMembership": "'11034'"} for i in range(sent)]
    return json.dumps({"attributes": objects}).encode()


def test_every_case_names_a_known_source_and_fits_its_request():
    sources = load_sources()
    assert len(CASES) >= 44
    assert len({c.id for c in CASES}) == len(CASES)
    for case in CASES:
        assert case.source in sources, case.id
        assert len(case.expect) == case.sent, case.id
    for name, source in sources.items():
        assert source.get("what"), name
        if "repository" in source:
            assert len(source["commit"]) == 40 and source["path"], name


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@responses.activate
def test_recorded_answer_gives_the_recorded_verdict_per_object(case):
    responses.post(
        f"{ENDPOINT}/users/track",
        body=case.content,
        status=case.status,
        headers=case.headers,
        content_type="application/json",
    )
    with BrazeClient(timeout_s=5) as client:
        response = client.track(ENDPOINT, KEY, body_for(case.sent))
    assert response.status == case.status
    outcome = classify_response(response, sent=case.sent, now=NOW)
    assert notation(outcome, case.sent) == case.expect


def test_no_recorded_answer_acknowledges_an_object_braze_named():
    """Whatever the verdict, an object an indexed ``attributes`` error names is never acked."""
    for case in CASES:
        try:
            body = json.loads(case.content)
        except ValueError:
            continue
        errors = body.get("errors") if isinstance(body, dict) else None
        named = {
            e["index"]
            for e in errors or ()
            if isinstance(e, dict)
            and isinstance(e.get("index"), int)
            and e.get("input_array", "attributes") == "attributes"
        }
        for index in named:
            assert case.expect[index] != "ack", case.id


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
error_entries = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values | st.sampled_from(["EMAIL_BAD_FORMAT", "User is blacklisted"]),
        "index": json_values | st.integers(-3, 80) | st.sampled_from(["0", "1", " 2", "x"]),
        "input_array": json_values | st.sampled_from(["attributes", "events"]),
    },
)
braze_like = st.fixed_dictionaries(
    {},
    optional={
        "message": json_values | st.sampled_from(["success", "queued"]),
        "errors": st.lists(error_entries | json_values, max_size=6) | json_values,
    },
)
statuses = st.one_of(st.none(), st.integers(-1000, 1000), st.sampled_from([200, 201, 400, 429]))
header_maps = st.dictionaries(
    st.sampled_from(["Retry-After", "x-ratelimit-reset", "X-Ratelimit-Retry-After", "other"]),
    st.text(max_size=30) | st.sampled_from(["1e400", "-1", "nan", "Tue, 14 Nov 9999 22:13:10 GMT"]),
)


@settings(max_examples=400, deadline=None)
@given(
    status=statuses,
    headers=header_maps,
    body=braze_like | json_values | st.binary(max_size=40),
    sent=st.integers(0, 80),
    error=st.none() | st.text(max_size=10),
)
def test_classifier_never_raises(status, headers, body, sent, error):
    outcome = classify_track_response(status, headers, body, sent=sent, now=NOW, error=error)
    assert outcome.kind in set(Kind)
    assert all(0 <= i < max(sent, 1) for i in outcome.per_object)
    if outcome.kind == Kind.PARTIAL:
        assert outcome.per_object
    notation(outcome, sent)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    status=st.integers(200, 599),
    content=st.binary(max_size=60) | braze_like.map(lambda b: json.dumps(b).encode()),
)
def test_client_and_classifier_never_raise_on_any_bytes(status, content):
    with responses.RequestsMock() as mock, BrazeClient(timeout_s=5) as client:
        mock.post(f"{ENDPOINT}/users/track", body=content, status=status)
        response = client.track(ENDPOINT, KEY, body_for(2))
    outcome = classify_response(response, sent=2, now=NOW)
    assert outcome.kind in set(Kind)
