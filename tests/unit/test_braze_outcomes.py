"""classify_track_response: every answer of SPEC §5.3, from tables with a fixed NOW."""

from __future__ import annotations

import pytest

from audience_sync.braze.client import TrackResponse
from audience_sync.braze.headers import reset_at, retry_after_at
from audience_sync.braze.outcomes import (
    Kind,
    ObjectOutcome,
    Verdict,
    classify_object_error,
    classify_response,
    classify_track_response,
)

NOW = 1_700_000_000.0
SUCCESS = {"message": "success"}
BLACKLISTED = "provided external_id is blacklisted and disallowed"
REQUIRED_OLD = "'external_id' or 'braze_id' or 'user_alias' is required"
REQUIRED_NEW = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"


def err(index, type_="'email_subscribe' must be one of ...", array="attributes"):
    entry = {"type": type_, "input_array": array}
    if index is not None:
        entry["index"] = index
    return entry


CASES = [
    # status, headers, body, sent, kind, reason
    (201, {}, SUCCESS, 75, Kind.ACCEPTED, "success"),
    (200, {}, {"message": "success", "attributes_processed": 3}, 3, Kind.ACCEPTED, "success"),
    (201, {}, {"message": "success", "errors": []}, 3, Kind.ACCEPTED, "success"),
    (202, {}, {"message": "queued"}, 3, Kind.ACCEPTED, "queued"),
    (201, {}, {"message": "success", "errors": [err(1)]}, 3, Kind.PARTIAL, "partial"),
    (
        201,
        {},
        {"message": "success", "errors": [err(None)]},
        3,
        Kind.RETRY_ALL,
        "error_without_index",
    ),
    (
        201,
        {},
        {"message": "success", "errors": [err("x")]},
        3,
        Kind.RETRY_ALL,
        "error_without_index",
    ),
    (
        201,
        {},
        {"message": "success", "errors": [err(True)]},
        3,
        Kind.RETRY_ALL,
        "error_without_index",
    ),
    (
        201,
        {},
        {"message": "success", "errors": ["minor error"]},
        3,
        Kind.RETRY_ALL,
        "error_without_index",
    ),
    (201, {}, {"message": "success", "errors": "oops"}, 3, Kind.RETRY_ALL, "error_without_index"),
    (
        201,
        {},
        {"message": "success", "errors": [err(3)]},
        3,
        Kind.RETRY_ALL,
        "error_index_out_of_range",
    ),
    (
        201,
        {},
        {"message": "success", "errors": [err(-1)]},
        3,
        Kind.RETRY_ALL,
        "error_index_out_of_range",
    ),
    (
        201,
        {},
        {"message": "success", "errors": [err(0, array="events")]},
        3,
        Kind.RETRY_ALL,
        "error_unknown_array",
    ),
    (
        201,
        {},
        {"message": "success", "errors": [err(0), err(None)]},
        3,
        Kind.PARTIAL,
        "partial_unindexed",
    ),
    (201, {}, {"message": "something odd"}, 3, Kind.RETRY_ALL, "unexpected_message"),
    (201, {}, None, 3, Kind.RETRY_ALL, "unparseable_body"),
    (201, {}, ["success"], 3, Kind.RETRY_ALL, "unparseable_body"),
    (400, {}, {"message": "Bad Request"}, 5, Kind.SPLIT, "bad_request"),
    (400, {}, {"message": "Bad Request"}, 1, Kind.BAD_REQUEST, "bad_request"),
    (400, {}, {"message": "Max Input Length Exceeded"}, 76, Kind.SPLIT, "bad_request"),
    (401, {}, {"message": "Invalid API key"}, 5, Kind.SUSPEND, "unauthorized"),
    (403, {}, {"message": "Access Denied"}, 5, Kind.SUSPEND, "forbidden"),
    (404, {}, None, 5, Kind.CONFIG_ERROR, "not_found"),
    (405, {}, None, 5, Kind.CONFIG_ERROR, "method_not_allowed"),
    (415, {}, None, 5, Kind.CONFIG_ERROR, "unsupported_media_type"),
    (413, {}, None, 5, Kind.SPLIT, "too_large"),
    (413, {}, None, 1, Kind.BAD_REQUEST, "too_large"),
    (422, {}, None, 2, Kind.SPLIT, "http_422"),
    (408, {}, None, 5, Kind.RETRY_ALL, "http_408"),
    (429, {"X-Ratelimit-Retry-After": "2"}, None, 5, Kind.RATE_LIMITED, "rate_limited"),
    (500, {}, {"message": "Internal Server Error"}, 5, Kind.RETRY_ALL, "http_500"),
    (502, {}, None, 5, Kind.RETRY_ALL, "http_502"),
    (503, {}, None, 5, Kind.RETRY_ALL, "http_503"),
    (504, {}, None, 5, Kind.RETRY_ALL, "http_504"),
    (301, {"Location": "https://elsewhere"}, None, 5, Kind.CONFIG_ERROR, "http_301"),
    (None, {}, None, 5, Kind.RETRY_ALL, "connection_error"),
]


@pytest.mark.parametrize(
    ("status", "headers", "body", "sent", "kind", "reason"),
    CASES,
    ids=[f"{c[0]}-{c[5]}-{i}" for i, c in enumerate(CASES)],
)
def test_classify(status, headers, body, sent, kind, reason):
    outcome = classify_track_response(status, headers, body, sent=sent, now=NOW)
    assert outcome.kind == kind
    assert outcome.reason == reason
    if kind != Kind.PARTIAL:
        assert not outcome.per_object
    if kind != Kind.RATE_LIMITED:
        assert outcome.retry_at is None


def test_kind_is_a_plain_string():
    outcome = classify_track_response(201, {}, SUCCESS, sent=1, now=NOW)
    assert outcome.kind == "ACCEPTED"
    assert isinstance(outcome.kind, str)


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (None, Kind.RETRY_ALL, "connection_error"),
        ("timeout", Kind.RETRY_ALL, "timeout"),
        ("connection_error", Kind.RETRY_ALL, "connection_error"),
        ("invalid_url", Kind.CONFIG_ERROR, "invalid_url"),
    ],
)
def test_no_answer_uses_the_client_reason(error, kind, reason):
    outcome = classify_track_response(None, {}, None, sent=3, now=NOW, error=error)
    assert (outcome.kind, outcome.reason) == (kind, reason)


def test_partial_maps_each_error_to_its_position_and_permanence():
    body = {
        "message": "success",
        "attributes_processed": 2,
        "errors": [
            err(0, BLACKLISTED),
            err(2, "'SegmentMembership' could not be processed"),
            err(4, REQUIRED_OLD),
            err(5, REQUIRED_NEW),
            err(6, "EXTERNAL_USER_ID_TOO_LARGE"),
            err(7, "BLACKLISTED_EXTERNAL_USER_ID"),
        ],
    }
    outcome = classify_track_response(201, {}, body, sent=9, now=NOW)
    assert outcome.kind == Kind.PARTIAL
    dead = Verdict.DEAD_LETTER
    assert dict(outcome.per_object) == {
        0: ObjectOutcome(verdict=dead, reason="blacklisted_external_id"),
        2: ObjectOutcome(verdict=Verdict.RETRY, reason="object_error"),
        4: ObjectOutcome(verdict=dead, reason="missing_identifier"),
        5: ObjectOutcome(verdict=dead, reason="missing_identifier"),
        6: ObjectOutcome(verdict=dead, reason="external_id_too_large"),
        7: ObjectOutcome(verdict=dead, reason="blacklisted_external_id"),
    }
    assert "blacklisted" in outcome.detail


def test_index_given_as_digit_string_is_placed():
    body = {"message": "success", "errors": [err("1")]}
    outcome = classify_track_response(201, {}, body, sent=2, now=NOW)
    assert outcome.kind == Kind.PARTIAL
    assert list(outcome.per_object) == [1]


def test_two_errors_on_one_object_permanent_wins():
    body = {"message": "success", "errors": [err(1, "temporary"), err(1, BLACKLISTED)]}
    outcome = classify_track_response(201, {}, body, sent=2, now=NOW)
    assert outcome.per_object[1].permanent


@pytest.mark.parametrize(
    ("type_", "verdict", "reason", "fields"),
    [
        (BLACKLISTED, Verdict.DEAD_LETTER, "blacklisted_external_id", ()),
        ("external_id is blocklisted", Verdict.DEAD_LETTER, "blacklisted_external_id", ()),
        ("BLACKLISTED_EXTERNAL_USER_ID", Verdict.DEAD_LETTER, "blacklisted_external_id", ()),
        ("EXTERNAL_USER_ID_TOO_LARGE", Verdict.DEAD_LETTER, "external_id_too_large", ()),
        ("'external_id' is too large", Verdict.DEAD_LETTER, "external_id_too_large", ()),
        (REQUIRED_OLD, Verdict.DEAD_LETTER, "missing_identifier", ()),
        (REQUIRED_NEW, Verdict.DEAD_LETTER, "missing_identifier", ()),
        (
            "'email_subscribe' must be one of subscribed, unsubscribed",
            Verdict.DROP_FIELD,
            "invalid_attribute",
            ("email_subscribe",),
        ),
        ("", Verdict.RETRY, "object_error", ()),
        (None, Verdict.RETRY, "object_error", ()),
        ({"nested": 1}, Verdict.RETRY, "object_error", ()),
    ],
    ids=[
        "blacklisted-text",
        "blocklisted-text",
        "blacklisted-enum",
        "too-large-enum",
        "too-large-text",
        "required-old",
        "required-new",
        "attribute-value",
        "empty",
        "none",
        "not-a-string",
    ],
)
def test_object_error_types(type_, verdict, reason, fields):
    expected = ObjectOutcome(verdict=verdict, reason=reason, fields=fields)
    assert classify_object_error(type_) == expected


def test_400_naming_its_culprits_gets_the_2xx_verdicts_and_resends_the_rest():
    body = {
        "message": "Valid data must be provided in the 'attributes', 'events', or 'purchases'",
        "errors": [err(0, REQUIRED_NEW), err(2, "EMAIL_BAD_FORMAT")],
    }
    outcome = classify_track_response(400, {}, body, sent=4, now=NOW)
    assert outcome.kind == Kind.PARTIAL
    assert {i: (o.verdict, o.reason) for i, o in outcome.per_object.items()} == {
        0: (Verdict.DEAD_LETTER, "missing_identifier"),
        1: (Verdict.RESEND, "bad_request"),
        2: (Verdict.DROP_FIELD, "invalid_email"),
        3: (Verdict.RESEND, "bad_request"),
    }


RATE_LIMIT_CASES = [
    ({"X-Ratelimit-Retry-After": "2"}, NOW + 2),
    ({"x-ratelimit-retry-after": "0.5"}, NOW + 0.5),
    ({"Retry-After": "7"}, NOW + 7),
    ({"RETRY-AFTER": "Tue, 14 Nov 2023 22:13:30 GMT"}, 1_700_000_010.0),
    ({"Retry-After": "Tue, 14 Nov 2023 22:13:10 GMT"}, NOW),  # in the past: now
    ({"X-Ratelimit-Retry-After": "3", "Retry-After": "9"}, NOW + 3),
    ({"Retry-After": "garbage", "x-ratelimit-reset": "4"}, NOW + 4),
    ({"x-ratelimit-reset": "1700000042"}, 1_700_000_042.0),  # epoch
    ({"x-ratelimit-reset": "3600"}, NOW + 3600),  # window-sized: seconds remaining
    ({"x-ratelimit-reset": "3601"}, NOW),  # an epoch long past: now
    ({}, NOW + 1),
    ({"Retry-After": "-5"}, NOW + 1),
    ({"Retry-After": "nan"}, NOW + 1),
]


@pytest.mark.parametrize(
    ("headers", "expected"),
    RATE_LIMIT_CASES,
    ids=[
        "x-retry-after",
        "lower-case-fraction",
        "retry-after-seconds",
        "retry-after-http-date",
        "retry-after-date-past",
        "x-wins-over-standard",
        "bad-retry-after-falls-back-to-reset",
        "reset-epoch",
        "reset-seconds",
        "reset-old-epoch",
        "nothing-defaults-1s",
        "negative-ignored",
        "nan-ignored",
    ],
)
def test_rate_limited_retry_at(headers, expected):
    outcome = classify_track_response(429, headers, None, sent=5, now=NOW)
    assert outcome.kind == Kind.RATE_LIMITED
    assert outcome.retry_at == pytest.approx(expected)


def test_reset_helpers_both_meanings():
    assert reset_at("2", NOW) == NOW + 2
    assert reset_at("1700000100", NOW) == 1_700_000_100
    assert reset_at(None, NOW) is None
    assert reset_at("soon", NOW) is None
    assert retry_after_at({}, NOW) is None


def test_classify_response_takes_a_client_response():
    response = TrackResponse(status=None, headers={}, body=None, elapsed_s=1.0, error="timeout")
    outcome = classify_response(response, sent=3, now=NOW)
    assert (outcome.kind, outcome.reason) == (Kind.RETRY_ALL, "timeout")


def test_413_always_splits_even_when_errors_name_objects():
    body = {"message": "Payload Too Large", "errors": [err(0, "EMAIL_BAD_FORMAT")]}
    outcome = classify_track_response(413, {}, body, sent=3, now=NOW)
    assert (outcome.kind, outcome.reason, dict(outcome.per_object)) == (Kind.SPLIT, "too_large", {})
