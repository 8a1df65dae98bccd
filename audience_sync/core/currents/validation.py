"""The local check of what we send to mParticle (SPEC §6.4): ``/v2/bulkevents`` answers 202
even when a batch is invalid, so every event, envelope and batch is checked here first.

The rules are those of mParticle's Events API models (the enums and UUID fields the SDK
validates); the test suite's fake server judges with the SDK itself.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

from audience_sync.core.currents.mapping import MappedEvent, is_uuid
from audience_sync.core.currents.table import MP_EVENT_TYPES, UNINSTALL

ENVIRONMENTS = frozenset({"production", "development"})
PLATFORMS = frozenset(
    {
        "Unknown",
        "iOS",
        "Android",
        "web",
        "tvOS",
        "roku",
        "out_of_band",
        "alexa",
        "smart_tv",
        "fire_tv",
        "xbox",
    }
)
CUSTOM_EVENT_TYPES = frozenset(
    {
        "unknown",
        "navigation",
        "location",
        "search",
        "transaction",
        "user_content",
        "user_preference",
        "social",
        "other",
        "media",
    }
)
UUID_DEVICE_KEYS = frozenset(
    {
        "ios_idfv",
        "ios_advertising_id",
        "android_advertising_id",
        "roku_advertising_id",
        "fire_advertising_id",
    }
)
MAX_BATCH_BYTES = 128 * 1024 - 1
"""A batch must stay under 128 KB (SPEC §6.4)."""


_STR = frozenset({str})


def _is_mapping(value: object) -> t.TypeGuard[Mapping[t.Any, t.Any]]:
    """``isinstance(value, Mapping)``, with the ABC check skipped for plain dicts (each event
    is checked several times, and the ABC check is the slow part)."""
    return type(value) is dict or isinstance(value, Mapping)


def _strings(value: object) -> bool:
    """A mapping of strings to strings (checked by type sets, in C: this runs for every event)."""
    return (
        _is_mapping(value)
        and _STR.issuperset(map(type, value))
        and _STR.issuperset(map(type, value.values()))
    )


def mapped_problems(mapped: MappedEvent, *, identity_key: str) -> list[str]:
    """What :func:`event_problems` and :func:`envelope_problems` find in an event that
    :func:`~audience_sync.core.currents.mapping.map_event` built, in one pass at a fraction of
    their cost (the intake checks every event).

    It relies on what map_event guarantees (each part a dict with its keys; every custom
    attribute value made a string) and checks the rest as they do: what comes from the table
    (types and names) and from the input (time, id, attribute names, identities, device info,
    user attributes). ``tests/unit/test_currents_validation.py`` holds the answers equal.
    """
    event, envelope = mapped.event, mapped.envelope
    data = event["data"]
    event_type = event["event_type"]
    problems = []
    if event_type not in MP_EVENT_TYPES:
        problems.append(f"event_type: {event_type!r} is not one we send")
    ts = data["timestamp_unixtime_ms"]
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        problems.append("data.timestamp_unixtime_ms: must be a non-negative integer")
    message_id = data["source_message_id"]
    if not isinstance(message_id, str) or not message_id:
        problems.append("data.source_message_id: required")
    if not _STR.issuperset(map(type, data["custom_attributes"])):
        problems.append("data.custom_attributes: values must be strings")
    if event_type != UNINSTALL:
        name = data.get("event_name")
        if not isinstance(name, str) or not name:
            problems.append("data.event_name: required")
        if data.get("custom_event_type") not in CUSTOM_EVENT_TYPES:
            problems.append("data.custom_event_type: not one of mParticle's types")
    identities = envelope["user_identities"]
    if not _strings(identities) or not identities.get(identity_key):
        problems.append(f"user_identities.{identity_key}: required string")
    problems += _device_info_problems(envelope["device_info"])
    user_attributes = envelope["user_attributes"]
    if user_attributes and not _strings(user_attributes):
        problems.append("user_attributes: values must be strings")
    return problems


def _device_info_problems(info: Mapping[str, t.Any]) -> list[str]:
    """What mParticle would refuse in a batch's ``device_info`` object."""
    problems = []
    if "platform" in info and info["platform"] not in PLATFORMS:
        problems.append("device_info.platform: not one of mParticle's platforms")
    if not UUID_DEVICE_KEYS.isdisjoint(info):
        for key in UUID_DEVICE_KEYS & set(info):
            if not is_uuid(info[key]):
                problems.append(f"device_info.{key}: must be a UUID")
    return problems


def event_problems(event: Mapping[str, t.Any]) -> list[str]:
    """What mParticle would refuse in one ``events[]`` entry."""
    problems = []
    event_type = event.get("event_type")
    if event_type not in MP_EVENT_TYPES:
        problems.append(f"event_type: {event_type!r} is not one we send")
    data = event.get("data")
    if not _is_mapping(data):
        return [*problems, "data: must be an object"]
    ts = data.get("timestamp_unixtime_ms")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
        problems.append("data.timestamp_unixtime_ms: must be a non-negative integer")
    if not isinstance(data.get("source_message_id"), str) or not data["source_message_id"]:
        problems.append("data.source_message_id: required")
    if not _strings(data.get("custom_attributes", {})):
        problems.append("data.custom_attributes: values must be strings")
    if event_type != UNINSTALL:
        if not isinstance(data.get("event_name"), str) or not data["event_name"]:
            problems.append("data.event_name: required")
        if data.get("custom_event_type") not in CUSTOM_EVENT_TYPES:
            problems.append("data.custom_event_type: not one of mParticle's types")
    return problems


def envelope_problems(envelope: Mapping[str, t.Any], *, identity_key: str) -> list[str]:
    """What mParticle would refuse in a batch's user part."""
    problems = []
    identities = envelope.get("user_identities")
    if not _strings(identities) or not identities.get(identity_key):
        problems.append(f"user_identities.{identity_key}: required string")
    info = envelope.get("device_info", {})
    if not _is_mapping(info):
        problems.append("device_info: must be an object")
    else:
        problems += _device_info_problems(info)
    if not _strings(envelope.get("user_attributes", {})):
        problems.append("user_attributes: values must be strings")
    return problems


def batch_problems(*, environment: str, events: int, size: int) -> list[str]:
    """What mParticle would refuse in a batch's frame (its parts are checked at intake)."""
    problems = []
    if environment not in ENVIRONMENTS:
        problems.append(f"environment: must be one of {', '.join(sorted(ENVIRONMENTS))}")
    if events < 1:
        problems.append("events: at least one")
    if size > MAX_BATCH_BYTES:
        problems.append(f"size: {size} bytes, over 128 KB")
    return problems
