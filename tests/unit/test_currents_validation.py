"""The intake's check of mapped events (``mapped_problems``) finds what the full checks of an
event and its envelope find, for any input map_event accepts and any table."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.core.currents.events import InvalidEventError, from_record
from audience_sync.core.currents.mapping import MappedEvent, map_event
from audience_sync.core.currents.table import default_table, override_table
from audience_sync.core.currents.validation import (
    envelope_problems,
    event_problems,
    mapped_problems,
)

TABLE = default_table()
TYPES = sorted(TABLE.entries)
UUID = "f47ac10b-58cc-4372-a567-0e02b2c3d479"


class Text(str):
    """A str subclass: mParticle's rules (exact strings) refuse it as a key."""


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from([UUID, "ios", "Android", "web", "ios_idfa", "google_ad_id", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
field_names = st.one_of(
    st.sampled_from(
        [
            "email_address",
            "platform",
            "app_id",
            "device_id",
            "device_model",
            "ad_id",
            "ad_id_type",
            "ad_tracking_enabled",
            "to_phone_number",
            "user_id",
            "timezone",
        ]
    ),
    st.text(max_size=6),
    st.builds(Text, st.text(min_size=1, max_size=4)),
)
tables = st.one_of(
    st.just(TABLE),
    st.builds(
        lambda currents_type, custom_event_type: override_table(
            TABLE, {currents_type: {"custom_event_type": custom_event_type}}
        ),
        st.sampled_from(TYPES),
        st.sampled_from(["other", "navigation", "bogus", ""]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(
    event_type=st.sampled_from(TYPES),
    fields=st.dictionaries(field_names, values, max_size=8),
    user=st.one_of(st.text(min_size=1, max_size=4), st.builds(Text, st.text(min_size=1))),
    time_ms=st.integers(min_value=-1, max_value=2**53),
    table=tables,
    identity_key=st.sampled_from(["customerid", "email", "other_id_1", ""]),
)
def test_mapped_problems_are_the_full_checks(
    event_type, fields, user, time_ms, table, identity_key
):
    record = {**fields, "external_user_id": user, "id": str(uuid.uuid4()), "time_ms": time_ms}
    try:
        event = from_record(record, event_type)
    except InvalidEventError:
        return
    mapped = map_event(event, table, identity_key=identity_key)
    if not isinstance(mapped, MappedEvent):
        return
    assert mapped_problems(mapped, identity_key=identity_key) == event_problems(
        mapped.event
    ) + envelope_problems(mapped.envelope, identity_key=identity_key)


def test_the_checks_can_fail():
    """Not vacuous: a bad custom_event_type, str-subclass attribute names and identities."""
    table = override_table(TABLE, {"users.messages.email.Open": {"custom_event_type": "bogus"}})
    record = {"id": "i", "time": 1, "external_user_id": Text("u"), Text("name"): "v"}
    event = from_record(record, "users.messages.email.Open")
    mapped = map_event(event, table, identity_key="customerid")
    assert isinstance(mapped, MappedEvent)
    assert mapped_problems(mapped, identity_key="customerid") == [
        "data.custom_attributes: values must be strings",
        "data.custom_event_type: not one of mParticle's types",
        "user_identities.customerid: required string",
    ]
