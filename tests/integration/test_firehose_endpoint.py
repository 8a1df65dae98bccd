"""``POST /firehose`` over HTTP: samples, responses, authentication, bad input (SPEC §3.1)."""

from __future__ import annotations

import io
import json
import time
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audience_sync.body_limits import DRAIN_FACTOR
from audience_sync.core.states import AudienceState, ConnectionState
from audience_sync.firehose import testing as ft
from audience_sync.store.schema import metadata
from tests.conftest import SAMPLES
from tests.unit.test_firehose_validation import mutated_messages


def sample_body(name: str) -> bytes:
    return (SAMPLES / "mparticle" / f"firehose_{name}.json").read_bytes()


def table_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == status
    return body


def assert_envelope(body: dict, response_type: str, request_id: str, version: str) -> None:
    assert body["type"] == response_type
    assert uuid.UUID(body["id"]).version == 4
    assert body["id"] != request_id
    assert abs(body["timestamp_ms"] - time.time() * 1000) < 60_000
    assert body["firehose_version"] == version


# --- the SDK's samples ------------------------------------------------------------------------


def test_registration_sample_needs_no_authentication(client, engine):
    response = client.post("/firehose", data=sample_body("ModuleRegistrationRequest"))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert_envelope(
        body, "module_registration_response", "438b0f74-8656-4f87-93c7-c9f9ac8a5544", "3.2.0"
    )
    assert body["name"] == "audience-sync"
    assert body["version"]
    assert body["permissions"]["allow_access_mpid"] is True
    ids = [s["id"] for s in body["audience_processing_registration"]["account_settings"]]
    assert "restApiKey" in ids and "sendSegmentsAs" in ids
    assert sum(table_counts(engine).values()) == 0


def test_subscription_sample(client, engine, auth_headers):
    response = client.post(
        "/firehose", data=sample_body("AudienceSubscriptionRequest"), headers=auth_headers
    )
    assert response.status_code == 200
    body = response.get_json()
    assert_envelope(
        body, "audience_subscription_response", "416d2087-8b21-476d-95da-1b78a7f44261", "3.2.0"
    )
    assert set(body) == {"type", "id", "timestamp_ms", "firehose_version"}
    with engine.connect() as conn:
        audience = conn.execute(sa.text("SELECT name, state FROM audiences")).one()
        connection = conn.execute(
            sa.text("SELECT account_id, state, settings_errors FROM connections")
        ).one()
    assert tuple(audience) == ("New Users Low Engagement", AudienceState.ACTIVE)
    # The sample has no restApiKey: accepted, and the connection waits for valid settings.
    assert connection.account_id == 123456
    assert connection.state == ConnectionState.INVALID_SETTINGS
    errors = connection.settings_errors
    errors = json.loads(errors) if isinstance(errors, str) else errors
    assert "restApiKey: required" in errors


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("AudienceMembershipChangeRequest", "3.2.0"),
        ("AudienceMembershipChangeRequest_v2.4.0_iterable", "2.4.0"),
    ],
)
def test_membership_samples_are_accepted_and_their_hashed_user_counted(
    client, engine, auth_headers, name, version
):
    response = client.post("/firehose", data=sample_body(name), headers=auth_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["type"] == "audience_membership_change_response"
    assert body["suspend_subscription"] is False
    assert body["firehose_version"] == version
    with engine.connect() as conn:
        count = conn.execute(
            sa.text(
                "SELECT count FROM counters "
                "WHERE scope = 'account:123456' AND reason = 'no_external_id'"
            )
        ).scalar_one()
        audiences = conn.execute(
            sa.text("SELECT audience_id, name FROM audiences ORDER BY 1")
        ).all()
        users = conn.execute(sa.text("SELECT count(*) FROM users")).scalar_one()
    assert count == 1
    assert users == 0
    assert [tuple(a) for a in audiences] == [
        (456, "Example Audience Name"),
        (654, "Example Audience Name 4"),
        (789, "Example Audience Name 2"),
    ]


def test_firehose_version_defaults_when_absent(client, auth_headers):
    body = ft.membership_request(1)
    del body["firehose_version"]
    response = client.post("/firehose", json=body, headers=auth_headers)
    assert response.get_json()["firehose_version"] == "3.2.0"


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="missing"),
        pytest.param("Token wrong", id="wrong"),
        pytest.param("Bearer test-firehose-token", id="other-scheme"),
        pytest.param("Token", id="empty"),
        pytest.param("test-firehose-token", id="no-scheme"),
    ],
)
def test_unauthenticated_requests_get_401_and_store_nothing(client, engine, header):
    headers = {"Authorization": header} if header else {}
    response = client.post(
        "/firehose",
        json=ft.membership_request(1, [ft.profile("u", [ft.audience_change(1)])]),
        headers=headers,
    )
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Token"
    assert sum(table_counts(engine).values()) == 0


def test_invalid_json_without_authentication_is_401(client):
    assert_error(client.post("/firehose", data=b"{not json"), 401)


def test_every_configured_token_is_accepted(make_client):
    client = make_client(**{"firehose.tokens": ["first-token", "second-token"]})
    for token in ("first-token", "second-token"):
        response = client.post(
            "/firehose", json=ft.membership_request(1), headers={"Authorization": f"Token {token}"}
        )
        assert response.status_code == 200
    bad = client.post(
        "/firehose", json=ft.membership_request(1), headers={"Authorization": "Token second"}
    )
    assert_error(bad, 401)


def test_no_configured_token_refuses_everything(make_client):
    client = make_client(**{"firehose.tokens": []})
    response = client.post(
        "/firehose", json=ft.membership_request(1), headers={"Authorization": "Token "}
    )
    assert_error(response, 401)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status", "field"),
    [
        pytest.param(b"{not json", 400, "_body", id="invalid-json"),
        pytest.param(b"", 400, "_body", id="empty"),
        pytest.param(b"\xff\xfe\x00", 400, "_body", id="not-utf8"),
        pytest.param(b'{"type": NaN}', 400, "_body", id="nan"),
        pytest.param(b'{"a": 1e999}', 400, "_body", id="infinity"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, "_body", id="deep"),
        pytest.param(b"[1, 2]", 400, "_schema", id="array"),
        pytest.param(
            b'{"type": "dsr_processing_request", "id": "x"}', 400, "type", id="unknown-type"
        ),
        pytest.param(b'{"id": "x"}', 422, "type", id="no-type"),
    ],
)
def test_undispatchable_bodies(client, engine, auth_headers, data, status, field):
    body = assert_error(client.post("/firehose", data=data, headers=auth_headers), status)
    assert list(body["errors"]) == [field]
    assert sum(table_counts(engine).values()) == 0


def test_schema_errors_name_every_bad_field_and_store_nothing(client, engine, auth_headers):
    request = ft.membership_request(
        7,
        [
            ft.profile("good", [ft.audience_change(1)]),
            ft.profile("bad", [ft.audience_change(2), ft.audience_change(3, action="join")]),
        ],
    )
    request["user_profiles"][0]["user_identities"][0]["encoding"] = "rot13"
    del request["id"]
    response = client.post("/firehose", json=request, headers=auth_headers)
    body = assert_error(response, 422)
    assert body["errors"] == {
        "id": ["Missing data for required field."],
        "user_profiles": {
            "0": {
                "user_identities": {"0": {"encoding": ["Must be one of: raw, md5, sha1, sha256."]}}
            },
            "1": {
                "audiences": {"1": {"action": ["Must be one of: add, delete, attribute_update."]}}
            },
        },
    }
    assert sum(table_counts(engine).values()) == 0


def test_subscription_with_unknown_action_is_422(client, engine, auth_headers):
    request = ft.subscription_request(1, 2, action="archive")
    body = assert_error(client.post("/firehose", json=request, headers=auth_headers), 422)
    assert body["errors"] == {"action": ["Must be one of: add, update, remove."]}
    assert sum(table_counts(engine).values()) == 0


def test_oversized_body_is_413(make_client, engine, auth_headers):
    client = make_client(**{"firehose.max_body_bytes": 2000})
    profiles = [ft.profile(f"user-{i}", [ft.audience_change(1)]) for i in range(40)]
    data = json.dumps(ft.membership_request(1, profiles)).encode()
    assert len(data) > 2000
    response = client.post("/firehose", data=data, headers=auth_headers)
    body = assert_error(response, 413)
    assert body["message"] == "request body too large"
    assert "Connection" not in response.headers  # drained: the connection stays usable
    # The limit is checked before routing, for every endpoint: a 413 tells nothing about tokens.
    assert_error(client.post("/firehose", data=data), 413)
    assert sum(table_counts(engine).values()) == 0


def test_body_beyond_the_drain_bound_is_413_without_being_read(make_client, engine, auth_headers):
    client = make_client(**{"firehose.max_body_bytes": 2000})
    stream = io.BytesIO(b"x" * (DRAIN_FACTOR * 2000 + 1))
    response = client.post(
        "/firehose",
        input_stream=stream,
        headers={**auth_headers, "Content-Length": str(DRAIN_FACTOR * 2000 + 1)},
    )
    assert_error(response, 413)
    assert stream.tell() == 0  # not read: the WSGI server deals with the rest
    # No hop-by-hop header from the app (waitress refuses it with a 500, PEP 3333).
    assert "Connection" not in response.headers
    chunked = client.post(
        "/firehose",
        input_stream=io.BytesIO(b"x" * (DRAIN_FACTOR * 2000 + 1)),
        headers={**auth_headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(chunked, 413)
    assert "Connection" not in chunked.headers
    assert sum(table_counts(engine).values()) == 0


def test_chunked_body_without_content_length_is_limited_too(make_client, engine, auth_headers):
    client = make_client(**{"firehose.max_body_bytes": 2000})
    profiles = [ft.profile(f"user-{i}", [ft.audience_change(1)]) for i in range(40)]
    data = json.dumps(ft.membership_request(1, profiles)).encode()

    def post(payload: bytes):
        # A WSGI server that de-chunks (waitress) announces it with wsgi.input_terminated.
        return client.post(
            "/firehose",
            input_stream=io.BytesIO(payload),
            headers={**auth_headers, "Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},
        )

    assert_error(post(data), 413)
    assert sum(table_counts(engine).values()) == 0
    small = json.dumps(ft.membership_request(1)).encode()
    assert post(small).status_code == 200


# --- fuzzing: bad input is never a 5xx, and a rejected request stores nothing -----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
message_types = st.sampled_from(
    [
        "audience_membership_change_request",
        "audience_subscription_request",
        "module_registration_request",
    ]
)


@st.composite
def typed_noise(draw):
    body = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "account",
                    "user_profiles",
                    "audience_id",
                    "audience_name",
                    "action",
                    "timestamp_ms",
                ]
            ),
            json_values,
        )
    )
    body["type"] = draw(message_types)
    return body


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check_no_5xx(client, engine, auth_headers, body: bytes) -> None:
    before = table_counts(engine)
    response = client.post("/firehose", data=body, headers=auth_headers)
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert_error(response, response.status_code)
        assert table_counts(engine) == before


@FUZZ
@given(body=json_values | typed_noise())
def test_random_json_never_yields_5xx(client, engine, auth_headers, body):
    _check_no_5xx(client, engine, auth_headers, json.dumps(body).encode())


@FUZZ
@given(body=mutated_messages())
def test_mutated_messages_never_yield_5xx(client, engine, auth_headers, body):
    body["id"] = str(uuid.uuid4()) if isinstance(body.get("id"), str) else body.get("id")
    _check_no_5xx(client, engine, auth_headers, json.dumps(body).encode())


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_never_yield_5xx(client, engine, auth_headers, data):
    _check_no_5xx(client, engine, auth_headers, data)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_an_integer_mpid_beyond_64_bits_is_kept_exactly_in_any_utf(
    client, engine, auth_headers, encoding
):
    """The fast JSON parser turns such integers into floats; the body is then judged exactly."""
    mpid = 123456789012345678901234567890
    message = ft.membership_request(
        4545, [{**ft.profile("big-mpid", [ft.audience_change(1)]), "mpid": mpid}]
    )
    body = json.dumps(message).encode(encoding)
    response = client.post(
        "/firehose", data=body, headers={**auth_headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT mpid FROM users WHERE external_id = 'big-mpid'")
        ).scalar_one()
    assert stored == str(mpid)
