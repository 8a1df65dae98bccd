"""Normalising and mapping Currents events (SPEC §6.3), from tables: every row of the mapping
table, every Braze sample (Avro and Custom HTTP), each judged by mParticle's SDK models."""

from __future__ import annotations

import json
import uuid

import orjson
import pytest

from audience_sync.core.currents.batching import QueuedEvent, plan_batches
from audience_sync.core.currents.events import InvalidEventError, from_http, from_record
from audience_sync.core.currents.mapping import Skip, attribute_value, map_event
from audience_sync.core.currents.table import default_table
from audience_sync.core.currents.validation import envelope_problems, event_problems
from audience_sync.currents.avro import read_records
from tests.currents_support import avro_samples, http_event, http_samples
from tests.fakes.mparticle_server import SdkJudge

TABLE = default_table()
JUDGE = SdkJudge()
UUID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


def batch_of(mapped, environment="production"):
    """Assemble the batch the sender would send for one mapped event."""
    queued = QueuedEvent(
        seq=1,
        event_id=mapped.event_id,
        feed="f",
        external_user_id=mapped.external_user_id,
        received_at=0.0,
        envelope_json=orjson.dumps(mapped.envelope).decode(),
        event_json=orjson.dumps(mapped.event).decode(),
    )
    plan = plan_batches([queued], environment=environment)
    assert plan.rejected == ()
    return json.loads(plan.batches[0].body)


def full_event(currents_type):
    """A Custom HTTP event carrying every field the table lists for its type."""
    entry = TABLE.get(currents_type)
    props = {k: f"v-{k}" for k in entry.custom_attributes if k != "source_request_id"}
    props.update(
        platform="ios",
        device_model="iPhone",
        ad_id=UUID,
        ad_id_type="ios_idfa",
        ad_tracking_enabled=False,
        email_address="a@example.com",
        to_phone_number="+15550100",
    )
    event = http_event(currents_type, user="ext-1", **props)
    event["user"]["device_id"] = UUID
    return from_http(event)


@pytest.mark.parametrize("currents_type", sorted(TABLE.entries), ids=str)
def test_every_exported_type_maps_as_the_table_says(currents_type):
    entry = TABLE.get(currents_type)
    event = full_event(currents_type)
    mapped = map_event(event, TABLE, identity_key="customerid")
    assert not isinstance(mapped, Skip)
    data = mapped.event["data"]
    assert mapped.event["event_type"] == entry.mp_event_type
    if entry.mp_event_type == "uninstall":
        assert "event_name" not in data and "custom_event_type" not in data
    else:
        assert data["event_name"] == entry.event_name
        assert data["custom_event_type"] == "other"
    assert data["timestamp_unixtime_ms"] == 1_700_000_000_000
    assert data["source_message_id"] == event.id
    attrs = data["custom_attributes"]
    for key in entry.custom_attributes:
        assert isinstance(attrs[key], str), key
    assert attrs["source_request_id"] == event.id
    for user_field in ("external_user_id", "email_address"):
        assert user_field not in attrs
    if "user_id" not in entry.custom_attributes:
        assert "user_id" not in attrs and "timezone" not in attrs
    assert set(mapped.envelope["device_info"]) <= set(entry.device_info)
    if "ios_idfv" in entry.device_info:
        assert mapped.envelope["device_info"]["ios_idfv"] == UUID
    if "platform" in entry.device_info:
        assert mapped.envelope["device_info"]["platform"] == "iOS"
    identities = mapped.envelope["user_identities"]
    assert identities == {"customerid": "ext-1", "email": "a@example.com"}
    if "$mobile" in entry.user_attributes:
        assert mapped.envelope["user_attributes"] == {"$mobile": "+15550100"}
    else:
        assert mapped.envelope["user_attributes"] == {}
    assert event_problems(mapped.event) == []
    assert envelope_problems(mapped.envelope, identity_key="customerid") == []
    assert JUDGE(batch_of(mapped)) is None


@pytest.mark.parametrize("path", avro_samples(), ids=lambda p: p.stem)
def test_every_avro_sample_maps_or_is_counted(path):
    event_type, records = read_records(path.read_bytes(), str(path))
    assert event_type == path.stem
    for record in records:
        event = from_record(record, event_type)
        mapped = map_event(event, TABLE, identity_key="customerid")
        if TABLE.get(event_type) is None:
            assert mapped is Skip.NOT_EXPORTED
            continue
        assert not isinstance(mapped, Skip)
        assert mapped.event["data"]["timestamp_unixtime_ms"] == record["time"] * 1000
        if record.get("email_address"):
            assert mapped.envelope["user_identities"]["email"] == record["email_address"]
        assert JUDGE(batch_of(mapped)) is None


@pytest.mark.parametrize(("event_type", "sample"), http_samples(), ids=lambda v: str(v)[:60])
def test_every_custom_http_sample_maps_or_is_counted(event_type, sample):
    event = from_http(sample)
    mapped = map_event(event, TABLE, identity_key="customerid")
    if TABLE.get(event_type) is None:
        assert mapped is Skip.NOT_EXPORTED
        return
    assert not isinstance(mapped, Skip)
    attrs = mapped.event["data"]["custom_attributes"]
    for key, value in sample.get("properties", {}).items():
        if key != "email_address" and value is not None:
            assert attrs[key] == attribute_value(value)
    assert JUDGE(batch_of(mapped)) is None


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"event_type": "x", "time": 1}, "id"),
        ({"id": "", "event_type": "x", "time": 1}, "id"),
        ({"id": "a", "time": 1}, "event_type"),
        ({"id": "a", "event_type": "x"}, "time"),
        ({"id": "a", "event_type": "x", "time": "1"}, "time"),
        ({"id": "a", "event_type": "x", "time": True}, "time"),
        ({"id": "a", "event_type": "x", "time": -1}, "time"),
        ("not an object", "event"),
        ({"id": "a", "event_type": "x", "time": 1e300}, "time"),
        ({"id": "a", "event_type": "x", "time": 1, "time_ms": -5}, "time_ms"),
        ({"id": "a\x00", "event_type": "x", "time": 1}, "id"),
        (
            {"id": "a", "event_type": "x", "time": 1, "user": {"external_user_id": "u" * 2000}},
            "external_user_id",
        ),
    ],
    ids=[
        "no-id",
        "empty-id",
        "no-type",
        "no-time",
        "time-text",
        "time-bool",
        "time-neg",
        "str",
        "time-huge",
        "time-ms-neg",
        "nul",
        "long-user",
    ],
)
def test_a_bad_single_event_is_invalid(event, field):
    with pytest.raises(InvalidEventError) as info:
        from_http(event)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("event", "skip"),
    [
        (http_event(user=None), Skip.NO_EXTERNAL_USER_ID),
        (http_event(user=""), Skip.NO_EXTERNAL_USER_ID),
        (http_event("users.behaviors.Purchase"), Skip.NOT_EXPORTED),
        (http_event("users.behaviors.CustomEvent"), Skip.NOT_EXPORTED),
        (http_event("some.future.Type"), Skip.NOT_EXPORTED),
    ],
    ids=["no-user", "empty-user", "purchase", "custom-event", "unknown"],
)
def test_events_not_forwarded_say_why(event, skip):
    assert map_event(from_http(event), TABLE, identity_key="customerid") is skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        ({"b": [1, "x"]}, '{"b":[1,"x"]}'),
        (["a", None], '["a",null]'),
        (b"raw", "raw"),
    ],
    ids=["str", "true", "false", "int", "float", "dict", "list", "bytes"],
)
def test_attribute_values_are_strings(value, expected):
    assert attribute_value(value) == expected


@pytest.mark.parametrize(
    ("props", "device_id", "expected"),
    [
        ({"platform": "android"}, UUID, {"platform": "Android", "ios_idfv": UUID}),
        ({"platform": "web"}, "not-a-uuid", {"platform": "web"}),
        ({"platform": "bogus"}, None, {}),
        ({"ad_id": UUID, "ad_id_type": "google_ad_id"}, None, {"android_advertising_id": UUID}),
        ({"ad_id": "x", "ad_id_type": "ios_idfa"}, None, {}),
        ({"ad_tracking_enabled": True}, None, {"limit_ad_tracking": False}),
    ],
    ids=["android", "web-bad-device", "bad-platform", "google-ad", "bad-ad-id", "tracking"],
)
def test_device_info_from_platform_and_device_ids(props, device_id, expected):
    event = http_event("users.messages.pushnotification.Open", **props)
    if device_id:
        event["user"]["device_id"] = device_id
    mapped = map_event(from_http(event), TABLE, identity_key="customerid")
    info = dict(mapped.envelope["device_info"])
    info.pop("device_model", None)
    assert info == expected


def test_identity_key_and_time_ms_are_honoured():
    record = {"id": "i", "time": 1, "time_ms": 1234, "external_user_id": "u", "user_id": "b"}
    event = from_record(record, "users.canvas.Entry")
    mapped = map_event(event, TABLE, identity_key="customer_id")
    assert mapped.envelope["user_identities"] == {"customer_id": "u"}
    assert mapped.event["data"]["timestamp_unixtime_ms"] == 1234


def test_the_sdk_judge_can_fail():
    """The oracle is not a rubber stamp: a wrong enum or a bad UUID is refused."""
    mapped = map_event(from_http(http_event()), TABLE, identity_key="customerid")
    batch = batch_of(mapped)
    assert JUDGE(batch) is None
    assert JUDGE({**batch, "environment": "prod"}) is not None
    assert JUDGE({**batch, "device_info": {"ios_idfv": "nope"}}) is not None
    bad_event = {
        "event_type": "custom_event",
        "data": {**batch["events"][0]["data"], "custom_event_type": "bogus"},
    }
    assert JUDGE({**batch, "events": [bad_event]}) is not None
    assert uuid.UUID(batch["source_request_id"])
