"""The mapping table as package data, and its config override (SPEC §6.3)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from audience_sync.core.currents.table import (
    MappingTableError,
    default_table,
    override_table,
    parse_table,
)

RAW = json.loads(
    resources.files("audience_sync.core.currents").joinpath("mparticle_map.json").read_text()
)


def test_the_bundled_table_has_the_77_exported_types():
    assert len(default_table()) == 77 == len(RAW)


@pytest.mark.parametrize("currents_type", sorted(RAW), ids=str)
def test_every_row_of_the_map_is_loaded_as_printed(currents_type):
    row = RAW[currents_type]
    entry = default_table().get(currents_type)
    assert entry is not None
    assert entry.mp_event_type == row["event_type"]
    assert entry.event_name == row["event_name"]
    assert entry.custom_event_type == row["custom_event_type"]
    assert list(entry.custom_attributes) == row["custom_attributes"]
    assert list(entry.device_info) == row["device_info"]
    assert list(entry.user_identities) == row["user_identities"]
    assert list(entry.user_attributes) == row["user_attributes"]


@pytest.mark.parametrize(
    ("currents_type", "event_name"),
    [
        ("users.messages.email.Open", "Email Opens"),
        ("users.messages.pushnotification.Send", "Push Notification Sends"),
        ("users.messages.inappmessage.Impression", "In-App Message Impressions"),
        ("users.canvas.Entry", "Canvas Entries"),
        ("users.messages.line.Abort", "Aborts"),
        ("users.messages.rcs.Abort", "Aborts"),
        ("users.behaviors.Uninstall", None),
    ],
    ids=lambda v: str(v),
)
def test_display_names_are_braze_plural_names(currents_type, event_name):
    assert default_table().get(currents_type).event_name == event_name


@pytest.mark.parametrize(
    "currents_type",
    [
        "users.behaviors.CustomEvent",
        "users.behaviors.Purchase",
        "users.behaviors.app.SessionStart",
        "agentconsole.AgentExecuted",
        "users.messages.pushnotification.IosForeground",
    ],
)
def test_types_without_an_mparticle_tab_are_absent(currents_type):
    assert default_table().get(currents_type) is None


def test_override_renames_removes_and_adds():
    table = override_table(
        default_table(),
        {
            "users.messages.email.Open": {"event_name": "Opened Email"},
            "users.canvas.Entry": None,
            "users.behaviors.Purchase": {"event_name": "Purchases"},
        },
    )
    opened = table.get("users.messages.email.Open")
    assert opened.event_name == "Opened Email"
    assert opened.user_identities == ("customerid", "email")  # the rest kept from the base
    assert table.get("users.canvas.Entry") is None
    assert table.get("users.behaviors.Purchase").mp_event_type == "custom_event"
    assert default_table().get("users.canvas.Entry") is not None  # the default is untouched


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"x": []}, "must be an object"),
        ({"x": {"event_type": "custom_event"}}, "event_name"),
        ({"x": {"event_type": "screen_view", "event_name": "a"}}, "event_type"),
        ({"x": {"event_name": "a", "device_info": "ios_idfv"}}, "device_info"),
    ],
    ids=["not-object", "no-name", "bad-type", "bad-keys"],
)
def test_bad_entries_name_the_entry(raw, message):
    with pytest.raises(MappingTableError, match=message):
        parse_table(raw)
