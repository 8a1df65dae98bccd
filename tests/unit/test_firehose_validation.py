"""Firehose message validation: the schemas' errors, and the fast path agreeing with them."""

from __future__ import annotations

import copy
import json

import marshmallow as ma
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_sync.core.identity import Identity
from audience_sync.errors import InvalidPayloadError
from audience_sync.firehose import testing as ft
from audience_sync.firehose.messages import (
    AudienceChange,
    MembershipChangeRequest,
    SubscriptionRequest,
    UserAttribute,
)
from audience_sync.firehose.schemas import SCHEMAS
from audience_sync.firehose.validation import fast_load, load_message
from tests.conftest import SAMPLES

SAMPLE_REQUESTS = [
    "firehose_ModuleRegistrationRequest.json",
    "firehose_AudienceSubscriptionRequest.json",
    "firehose_AudienceMembershipChangeRequest.json",
    "firehose_AudienceMembershipChangeRequest_v2.4.0_iterable.json",
]


def sample(name: str) -> dict:
    return json.loads((SAMPLES / "mparticle" / name).read_text())


def schema_load(data: dict):
    return SCHEMAS[data["type"]]().load(data)


def errors_of(data: object) -> tuple[int, dict]:
    with pytest.raises(InvalidPayloadError) as info:
        load_message(data)
    return info.value.status, info.value.errors


@pytest.mark.parametrize("name", SAMPLE_REQUESTS)
def test_every_sample_request_loads_on_the_fast_path_like_the_schema(name):
    data = sample(name)
    fast = fast_load(data)
    assert fast is not None
    assert fast == schema_load(data)


def test_membership_sample_skips_the_empty_user_attribute_entry():
    message = load_message(sample("firehose_AudienceMembershipChangeRequest.json"))
    assert isinstance(message, MembershipChangeRequest)
    (profile,) = message.user_profiles
    assert profile.mpid == "12345"
    assert [a.action for a in profile.audiences] == ["add", "attribute_update", "delete"]
    assert profile.audiences[1].user_attributes == (
        UserAttribute(key="Some Key", value="9999999", action="upsert"),
        UserAttribute(key="Churned", value=None, action="delete"),
    )
    assert profile.user_identities[0] == Identity(
        type="email", encoding="md5", value="e179e95c00e7718ab4a23840f992ea63"
    )


def test_subscription_sample_fields():
    message = load_message(sample("firehose_AudienceSubscriptionRequest.json"))
    assert isinstance(message, SubscriptionRequest)
    assert (message.account.account_id, message.audience_id, message.action) == (
        123456,
        1234,
        "add",
    )
    assert message.account.account_settings["apiKey"] == "sample API Key"


def _membership(**changes):
    body = ft.membership_request(
        1, [ft.profile("c1", [ft.audience_change(10), ft.audience_change(11)])]
    )
    body.update(changes)
    return body


def _with(path, value):
    """A valid membership body with the value at ``path`` replaced (or removed if ...)."""
    body = _membership()
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


BAD_BODIES = [
    pytest.param(_with(("id",), ...), {"id": ["Missing data for required field."]}, id="no-id"),
    pytest.param(_with(("id",), 12), {"id": ["Not a valid string."]}, id="id-int"),
    pytest.param(
        _with(("id",), "x" * 65), {"id": ["Longer than maximum length 64."]}, id="id-long"
    ),
    pytest.param(
        _with(("account",), ...), {"account": ["Missing data for required field."]}, id="no-account"
    ),
    pytest.param(
        _with(("account", "account_id"), "123"),
        {"account": {"account_id": ["Not a valid integer."]}},
        id="account-id-string",
    ),
    pytest.param(
        _with(("account", "account_id"), 2**63),
        {
            "account": {
                "account_id": [
                    "Must be greater than or equal to -9223372036854775808 "
                    "and less than or equal to 9223372036854775807."
                ]
            }
        },
        id="account-id-huge",
    ),
    pytest.param(
        _with(("account", "account_settings"), {"restApiKey": ["x"]}),
        {
            "account": {
                "account_settings": {
                    "restApiKey": {
                        "value": [
                            "Not a valid setting value: must be a string, number, boolean or null."
                        ]
                    }
                }
            }
        },
        id="setting-list",
    ),
    pytest.param(
        _with(("timestamp_ms",), "1714592744065"),
        {"timestamp_ms": ["Not a valid integer."]},
        id="timestamp-string",
    ),
    pytest.param(
        _with(("user_profiles",), {"a": 1}),
        {"user_profiles": ["Not a valid list."]},
        id="profiles-object",
    ),
    pytest.param(
        _with(("user_profiles", 0, "audiences", 1, "action"), "join"),
        {
            "user_profiles": {
                "0": {
                    "audiences": {
                        "1": {"action": ["Must be one of: add, delete, attribute_update."]}
                    }
                }
            }
        },
        id="unknown-action",
    ),
    pytest.param(
        _with(("user_profiles", 0, "audiences", 0, "audience_id"), 1.5),
        {"user_profiles": {"0": {"audiences": {"0": {"audience_id": ["Not a valid integer."]}}}}},
        id="audience-id-float",
    ),
    pytest.param(
        _with(("user_profiles", 0, "audiences", 0, "audience_name"), ...),
        {
            "user_profiles": {
                "0": {"audiences": {"0": {"audience_name": ["Missing data for required field."]}}}
            }
        },
        id="audience-name-missing",
    ),
    pytest.param(
        _with(("user_profiles", 0, "user_identities", 0, "encoding"), "base64"),
        {
            "user_profiles": {
                "0": {
                    "user_identities": {
                        "0": {"encoding": ["Must be one of: raw, md5, sha1, sha256."]}
                    }
                }
            }
        },
        id="unknown-encoding",
    ),
    pytest.param(
        _with(("user_profiles", 0, "user_identities", 0, "value"), "a\x00b"),
        {
            "user_profiles": {
                "0": {
                    "user_identities": {
                        "0": {"value": ["Must not contain NUL characters or unpaired surrogates."]}
                    }
                }
            }
        },
        id="nul-in-value",
    ),
    pytest.param(
        _with(("user_profiles", 0, "mpid"), True),
        {"user_profiles": {"0": {"mpid": ["Not a valid mpid: must be a string or an integer."]}}},
        id="mpid-bool",
    ),
    pytest.param(
        _with(("user_profiles", 0), None),
        {"user_profiles": {"0": ["Field may not be null."]}},
        id="null-profile",
    ),
]


@pytest.mark.parametrize(("body", "expected"), BAD_BODIES)
def test_schema_errors_are_422_naming_the_field(body, expected):
    assert fast_load(body) is None
    assert errors_of(body) == (422, expected)


def test_every_bad_field_is_named_at_once():
    body = _membership()
    body["user_profiles"][0]["audiences"][0]["action"] = "nope"
    body["user_profiles"][0]["audiences"][1]["audience_id"] = "11"
    body["account"]["account_id"] = None
    status, errors = errors_of(body)
    assert status == 422
    assert errors == {
        "account": {"account_id": ["Field may not be null."]},
        "user_profiles": {
            "0": {
                "audiences": {
                    "0": {"action": ["Must be one of: add, delete, attribute_update."]},
                    "1": {"audience_id": ["Not a valid integer."]},
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        pytest.param([], 400, "_schema", id="array"),
        pytest.param("text", 400, "_schema", id="string"),
        pytest.param({"id": "x"}, 422, "type", id="no-type"),
        pytest.param({"type": 3, "id": "x"}, 422, "type", id="type-int"),
        pytest.param({"type": "event_processing_request", "id": "x"}, 400, "type", id="unknown"),
    ],
)
def test_bodies_that_cannot_be_dispatched(body, status, field):
    got_status, errors = errors_of(body)
    assert got_status == status
    assert list(errors) == [field]


def test_optional_fields_may_be_null_or_absent():
    body = ft.membership_request(1, [{"audiences": None, "mpid": None, "user_identities": None}])
    body["timestamp_ms"] = None
    body["firehose_version"] = None
    body["account"]["account_settings"] = None
    message = load_message(body)
    assert message.timestamp_ms is None
    assert message.account.account_settings is None
    assert message.user_profiles[0].audiences == ()
    assert fast_load(body) == schema_load(body)


def test_unknown_fields_are_ignored_and_integer_mpid_is_text():
    body = _membership(surprise={"nested": [1]})
    body["user_profiles"][0]["mpid"] = -8412371829
    body["user_profiles"][0]["consent_state"] = {"gdpr": {}}
    message = load_message(body)
    assert message.user_profiles[0].mpid == "-8412371829"
    assert fast_load(body) == schema_load(body)


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param([{}, {"key": 3}, "x", None, {"key": "k", "value": 2}], id="entries"),
        pytest.param("not a list", id="not-a-list"),
        pytest.param(None, id="null"),
    ],
)
def test_malformed_user_attributes_are_skipped(attributes):
    body = _membership()
    body["user_profiles"][0]["audiences"][0]["user_attributes"] = attributes
    message = load_message(body)
    assert message.user_profiles[0].audiences[0] == AudienceChange(
        audience_id=10, audience_name="Audience 10", action="add"
    )
    assert fast_load(body) == schema_load(body)


# --- the fast path never accepts what the schema refuses, and agrees when both accept ------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def mutated_messages(draw):
    """A valid message with a few of its values (at any depth) replaced by random JSON."""
    base = draw(
        st.sampled_from(
            [
                _membership(),
                ft.membership_request(
                    2,
                    [
                        ft.profile("a", [ft.audience_change(1, "delete")], email="e", mpid="9"),
                        ft.profile(
                            None, [ft.audience_change(2, "attribute_update")], apns_token="t"
                        ),
                    ],
                    timestamp_ms=5,
                ),
                # Profiles repeating an audience entry and identity types: the fast path
                # checks those once per request, so a bad repeat must still be caught.
                _repeated_membership(),
                ft.subscription_request(3, 4, "remove"),
                sample("firehose_AudienceMembershipChangeRequest.json"),
                sample("firehose_ModuleRegistrationRequest.json"),
            ]
        )
    )
    body = copy.deepcopy(base)
    for _ in range(draw(st.integers(0, 3))):
        paths = []

        def walk(node, path):
            if isinstance(node, dict):
                for key, value in node.items():
                    paths.append((*path, key))
                    walk(value, (*path, key))
            elif isinstance(node, list):
                for index, value in enumerate(node):
                    paths.append((*path, index))
                    walk(value, (*path, index))

        walk(body, ())
        path = draw(st.sampled_from(paths))
        if path == ("type",):
            continue
        node = body
        for key in path[:-1]:
            node = node[key]
        if isinstance(node, dict) and draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(json_values)
    return body


def _repeated_membership() -> dict:
    return ft.membership_request(
        6,
        [
            ft.profile(
                f"c{n}",
                [ft.audience_change(1), ft.audience_change(2, "delete")],
                email=f"e{n}",
                apns_token=f"t{n}",
            )
            for n in range(3)
        ],
        timestamp_ms=7,
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(("audiences", 0, "audience_id"), True, id="bool-id"),
        pytest.param(("audiences", 0, "audience_id"), 2**63, id="id-out-of-range"),
        pytest.param(("audiences", 0, "audience_id"), "1", id="text-id"),
        pytest.param(("audiences", 0, "audience_name"), "Audience 1\x00", id="nul-name"),
        pytest.param(("audiences", 1, "action"), "remove", id="unknown-action"),
        pytest.param(("user_identities", 0, "type"), "customer\x00", id="nul-type"),
        pytest.param(("user_identities", 0, "encoding"), "base64", id="unknown-encoding"),
        pytest.param(("device_identities", 0, "value"), "\ud800", id="surrogate-value"),
    ],
)
def test_fast_path_checks_every_repeat_of_an_entry(path, value):
    body = _repeated_membership()
    node = body["user_profiles"][2]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert fast_load(body) is None
    with pytest.raises(ma.ValidationError):
        schema_load(body)


def test_fast_path_shares_repeated_audience_entries_with_equal_values():
    body = _repeated_membership()
    body["user_profiles"][1]["audiences"][0]["user_attributes"] = [{"key": "k", "value": "v"}]
    fast = fast_load(body)
    assert fast is not None
    assert fast == schema_load(body)
    first, second, third = (p.audiences[0] for p in fast.user_profiles)
    assert first is third
    assert second.user_attributes == (UserAttribute(key="k", value="v"),)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_fast_path_accepts_only_what_the_schema_accepts(body):
    fast = fast_load(body)
    try:
        loaded = schema_load(body)
    except ma.ValidationError:
        assert fast is None
        return
    if fast is not None:
        assert fast == loaded


@settings(max_examples=100)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.integers(-(2**63), 2**63 - 1),
            st.sampled_from(["add", "delete", "attribute_update"]),
        ),
        max_size=5,
    )
)
def test_fast_path_takes_every_well_formed_membership(entries):
    body = ft.membership_request(
        5,
        [
            ft.profile(customer, [ft.audience_change(aid, action)])
            for customer, aid, action in entries
        ],
    )
    try:
        loaded = schema_load(body)
    except ma.ValidationError:  # e.g. text with a NUL or a lone surrogate
        assert fast_load(body) is None
        return
    assert fast_load(body) == loaded
