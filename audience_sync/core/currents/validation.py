"""The local check of what we send to mParticle (SPEC §6.4): ``/v2/bulkevents`` answers 202
even when a batch is invalid, so every event, envelope and batch is checked here first.

The rules are those of mParticle's Events API models (the enums and UUID fields the SDK
validates); the test suite's fake server judges with the SDK itself.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Mapping

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


def _string_keys(value: object) -> bool:
    """A mapping whose keys are strings (its values are not looked at)."""
    return _is_mapping(value) and _STR.issuperset(map(type, value))


def event_problems(event: Mapping[str, t.Any]) -> list[str]:
    """What mParticle would refuse in one ``events[]`` entry."""
    return _event_problems(event, _strings)


def mapped_problems(mapped: MappedEvent, *, identity_key: str) -> list[str]:
    """:func:`event_problems` plus :func:`envelope_problems` of an event that
    :func:`~audience_sync.core.currents.mapping.map_event` built, for less (the intake checks
    every event): map_event makes every custom attribute value a string, so of the attributes
    only the names, which come from the input, are checked. The answers are the same
    (``tests/unit/test_currents_validation.py``)."""
    return _event_problems(mapped.event, _string_keys) + envelope_problems(
        mapped.envelope, identity_key=identity_key
    )


def _event_problems(
    event: Mapping[str, t.Any], attributes_ok: Callable[[object], bool]
) -> list[str]:
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
    if not attributes_ok(data.get("custom_attributes", {})):
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
        if "platform" in info and info["platform"] not in PLATFORMS:
            problems.append("device_info.platform: not one of mParticle's platforms")
        if not UUID_DEVICE_KEYS.isdisjoint(info):
            for key in UUID_DEVICE_KEYS & set(info):
                if not is_uuid(info[key]):
                    problems.append(f"device_info.{key}: must be a UUID")
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
