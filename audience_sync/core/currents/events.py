"""One value for a Currents event, whichever way it came (SPEC §6.1, §6.2, §6.3).

In the Custom HTTP format the event's fields are in ``properties`` and the user's in ``user``;
in Avro records both are top-level. Either way the result is a :class:`CurrentsEvent` whose
``fields`` hold every field except the envelope (``id``, ``event_type``, ``time``, ``time_ms``).
"""

from __future__ import annotations

import math
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass

ENVELOPE_FIELDS = frozenset({"id", "event_type", "time", "time_ms"})
MAX_ID_LENGTH = 256
"""Currents ids are UUIDs; anything far longer is not one of Braze's."""
MAX_LENGTHS = {"external_user_id": 1024, "app_id": 256, "platform": 32, "event_type": 256}
"""Longest accepted values (Braze's external ids stay under 988 bytes); longer is invalid."""


class InvalidEventError(ValueError):
    """A single event that cannot be used (no ``id``, ``event_type`` or ``time``): counted as
    ``invalid_event``, never a 400 for the whole batch."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(slots=True, kw_only=True)
class CurrentsEvent:
    """A Braze Currents event, normalised (not frozen: a frozen dataclass's ``__init__`` cost
    the import about 1.4 µs per event; nothing changes an event once built).

    Attributes:
        id: the Currents event id (becomes ``source_message_id``; dedup key).
        event_type: e.g. ``users.messages.email.Open``.
        time_ms: when it happened, epoch milliseconds.
        external_user_id: the user's external id, or None (then it is not forwarded).
        email: ``email_address`` when present.
        platform: ``ios``, ``android``, ``web``… when present.
        app_id: the Braze app id when present.
        device_id: the Braze device id when present.
        fields: every other field (user and event), values as received; read-only by
            contract (a ``MappingProxyType`` per event cost more than it guarded).
    """

    id: str
    event_type: str
    time_ms: int
    external_user_id: str | None
    email: str | None
    platform: str | None
    app_id: str | None
    device_id: str | None
    fields: Mapping[str, t.Any]


def _text(value: object) -> str | None:
    if isinstance(value, str) and value != "":
        return value
    return None


MAX_TIME_MS = 2**53
"""Timestamps beyond this are not times (and do not fit mParticle's integer)."""


def _time_ms(time_value: object, time_ms_value: object) -> int:
    if isinstance(time_ms_value, int) and not isinstance(time_ms_value, bool):
        if not 0 <= time_ms_value < MAX_TIME_MS:
            raise InvalidEventError("time_ms", "out of range")
        return time_ms_value
    if isinstance(time_value, bool) or not isinstance(time_value, int | float):
        raise InvalidEventError("time", "must be a number of seconds")
    if not math.isfinite(time_value) or not 0 <= time_value * 1000 < MAX_TIME_MS:
        raise InvalidEventError("time", "must be a non-negative number of seconds in range")
    return round(time_value * 1000)


CHECKED_FIELDS = (
    ("external_user_id", MAX_LENGTHS["external_user_id"]),
    ("app_id", MAX_LENGTHS["app_id"]),
    ("platform", MAX_LENGTHS["platform"]),
)
"""The fields whose length and NUL characters are checked (besides ``id`` and ``event_type``)."""


def _check_text(name: str, value: object, limit: int) -> None:
    if isinstance(value, str) and ("\x00" in value or len(value) > limit):
        raise InvalidEventError(name, "too long or contains a NUL character")


def _build(
    envelope: Mapping[str, t.Any], fields: dict[str, t.Any], event_type: object
) -> CurrentsEvent:
    event_id = envelope.get("id")
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > MAX_ID_LENGTH:
        raise InvalidEventError("id", "must be a non-empty string")
    if not isinstance(event_type, str) or not event_type.strip():
        raise InvalidEventError("event_type", "must be a non-empty string")
    time_ms = _time_ms(envelope.get("time"), envelope.get("time_ms"))
    _check_text("id", event_id, MAX_ID_LENGTH)
    _check_text("event_type", event_type, MAX_LENGTHS["event_type"])
    get = fields.get
    for name, limit in CHECKED_FIELDS:
        value = get(name)
        if isinstance(value, str) and ("\x00" in value or len(value) > limit):
            raise InvalidEventError(name, "too long or contains a NUL character")
    return CurrentsEvent(
        id=event_id,
        event_type=event_type,
        time_ms=time_ms,
        external_user_id=_text(get("external_user_id")),
        email=_text(get("email_address")),
        platform=_text(get("platform")),
        app_id=_text(get("app_id")),
        device_id=_text(get("device_id")),
        fields=fields,
    )


def from_http(obj: object) -> CurrentsEvent:
    """Normalise one event of a Custom HTTP batch.

    Raises:
        InvalidEventError: not an object, or no usable ``id``, ``event_type`` or ``time``.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEventError("event", "must be an object")
    fields: dict[str, t.Any] = {}
    properties = obj.get("properties")
    if isinstance(properties, Mapping):
        fields.update((k, v) for k, v in properties.items() if isinstance(k, str))
    user = obj.get("user")
    if isinstance(user, Mapping):
        fields.update((k, v) for k, v in user.items() if isinstance(k, str))
    for key, value in obj.items():
        if key not in ENVELOPE_FIELDS and key not in ("properties", "user"):
            fields.setdefault(key, value)
    return _build(obj, fields, obj.get("event_type"))


def from_record(record: Mapping[str, t.Any], event_type: str) -> CurrentsEvent:
    """Normalise one Avro record of a file whose type is ``event_type`` (path or schema name).

    Raises:
        InvalidEventError: no usable ``id`` or ``time``.
    """
    # A copy less a few pops: a filtering comprehension cost ~2 µs per 30-field record.
    fields = dict(record)
    for name in ENVELOPE_FIELDS:
        fields.pop(name, None)
    return _build(record, fields, event_type)
