"""A normalised Currents event → one mParticle event plus its user envelope (SPEC §6.3).

Reproduces Braze's own mParticle connector: ``custom_event`` (``custom_event_type: other``) or
``uninstall``, the plural display name, milliseconds, ``source_message_id`` = the Currents id,
``custom_attributes`` as strings (nested values JSON-encoded), ``device_info`` from platform and
device ids, ``user_identities`` keyed by ``currents.identity_key`` plus ``email``.
"""

from __future__ import annotations

import json
import typing as t
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from audience_sync.core.currents.events import CurrentsEvent
from audience_sync.core.currents.table import UNINSTALL, MappingTable, TypeMapping


class Skip(StrEnum):
    """Why an accepted event is not forwarded (each counted by this name)."""

    INVALID_EVENT = "invalid_event"
    NO_EXTERNAL_USER_ID = "no_external_user_id"
    NOT_EXPORTED = "not_exported"
    DUPLICATE = "duplicate"


USER_FIELDS = frozenset({"user_id", "external_user_id", "email_address", "timezone"})
"""Never custom attributes (the user ids go to ``user_identities`` or nowhere), unless the
table lists them for a type (``users.canvas.costep.Send`` and ``banner.Dismiss`` print
``user_id``/``timezone`` inside ``custom_attributes``)."""

PLATFORMS = {
    "ios": "iOS",
    "android": "Android",
    "android_china": "Android",
    "kindle": "Android",
    "web": "web",
    "tvos": "tvOS",
    "roku": "roku",
}
"""Braze ``platform`` → mParticle ``device_info.platform`` (the Events API's enum)."""

AD_ID_KEYS = {
    "ios_idfa": "ios_advertising_id",
    "google_ad_id": "android_advertising_id",
    "windows_ad_id": "microsoft_advertising_id",
    "roku_ad_id": "roku_advertising_id",
}
"""Braze ``ad_id_type`` → the mParticle ``device_info`` key of ``ad_id``."""
AD_ID_DEVICE_KEYS = frozenset(AD_ID_KEYS.values())

MOBILE_FIELDS = ("to_phone_number", "user_phone_number")
"""Where ``user_attributes.$mobile`` comes from (outbound, then inbound/click events)."""


@dataclass(slots=True, kw_only=True)
class MappedEvent:
    """One event ready to queue: ``event`` goes in a batch's ``events``, ``envelope`` (the
    user's identities, device info and attributes) is shared by every event of that batch.
    Not frozen: one is built per event, and nothing changes it once built."""

    event_id: str
    external_user_id: str
    app_id: str | None
    platform: str | None
    envelope: Mapping[str, t.Any]
    event: Mapping[str, t.Any]


def attribute_value(value: object) -> str:
    """An mParticle attribute value: a string; nested or list values JSON-encoded."""
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def is_uuid(value: object) -> bool:
    """Whether mParticle accepts ``value`` in a UUID-typed device field (``ios_idfv``…)."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


_EXCLUDED: dict[tuple[str, ...], frozenset[str]] = {}
"""The user fields left out of the attributes, by the table's ``custom_attributes`` (computed
once per entry rather than per event)."""


def custom_attributes(event: CurrentsEvent, entry: TypeMapping) -> dict[str, str]:
    """Every field but the user ids, as strings, plus ``source_request_id`` (the Currents id)."""
    excluded = _EXCLUDED.get(entry.custom_attributes)
    if excluded is None:
        excluded = _EXCLUDED[entry.custom_attributes] = USER_FIELDS.difference(
            entry.custom_attributes
        )
    out = {
        key: value if type(value) is str else attribute_value(value)
        for key, value in event.fields.items()
        if value is not None and key not in excluded
    }
    out["source_request_id"] = event.id
    return out


def device_info(event: CurrentsEvent, entry: TypeMapping) -> dict[str, t.Any]:
    """The ``device_info`` keys the table lists for this type, from the event's device fields.

    UUID-typed keys are left out when the value is not a UUID (mParticle rejects the batch).
    """
    wanted = entry.device_info
    if not wanted:
        return {}
    fields = event.fields
    out: dict[str, t.Any] = {}
    if "platform" in wanted and event.platform:
        platform = PLATFORMS.get(event.platform.lower())
        if platform:
            out["platform"] = platform
    if "device_model" in wanted and isinstance(fields.get("device_model"), str):
        out["device_model"] = fields["device_model"]
    if "ios_idfv" in wanted and is_uuid(event.device_id):
        out["ios_idfv"] = event.device_id
    if not AD_ID_DEVICE_KEYS.isdisjoint(wanted):
        ad_key = AD_ID_KEYS.get(str(fields.get("ad_id_type") or ""))
        if ad_key in wanted and is_uuid(fields.get("ad_id")):
            out[ad_key] = fields["ad_id"]
    if "limit_ad_tracking" in wanted:
        tracking = fields.get("ad_tracking_enabled")
        if isinstance(tracking, bool):
            out["limit_ad_tracking"] = not tracking
    return out


def user_attributes(event: CurrentsEvent, entry: TypeMapping) -> dict[str, str]:
    """``$mobile`` on SMS, RCS and WhatsApp events, from the phone number fields."""
    if "$mobile" not in entry.user_attributes:
        return {}
    for name in MOBILE_FIELDS:
        value = event.fields.get(name)
        if isinstance(value, str) and value:
            return {"$mobile": value}
    return {}


def map_event(
    event: CurrentsEvent, table: MappingTable, *, identity_key: str
) -> MappedEvent | Skip:
    """Map one event, or say why it is not forwarded."""
    entry = table.get(event.event_type)
    if entry is None:
        return Skip.NOT_EXPORTED
    if event.external_user_id is None:
        return Skip.NO_EXTERNAL_USER_ID
    identities = {identity_key: event.external_user_id}
    if event.email:
        identities["email"] = event.email
    data: dict[str, t.Any] = {}
    if entry.mp_event_type != UNINSTALL:
        data["event_name"] = entry.event_name
        data["custom_event_type"] = entry.custom_event_type
    data["timestamp_unixtime_ms"] = event.time_ms
    data["source_message_id"] = event.id
    data["custom_attributes"] = custom_attributes(event, entry)
    return MappedEvent(
        event_id=event.id,
        external_user_id=event.external_user_id,
        app_id=event.app_id,
        platform=event.platform,
        envelope={
            "user_identities": identities,
            "device_info": device_info(event, entry),
            "user_attributes": user_attributes(event, entry),
        },
        event={"event_type": entry.mp_event_type, "data": data},
    )
