"""Turn a decoded JSON body into a validated message, or an :class:`InvalidPayloadError`.

The marshmallow schemas of :mod:`.schemas` are the contract and write every error message.
Loading 500 profiles through them takes ~75 ms, most of mParticle's 100 ms budget, so the
common case goes through :func:`fast_load`, a plain-Python check of the same rules that builds
the same values. It *declines* (returns None) on anything it is not sure of, and the schema
then decides; so a difference between the two can only cost speed, never accept bad input.
``tests/unit/test_firehose_validation.py`` checks with hypothesis that whatever the fast path
accepts, the schema accepts with an equal result.
"""

from __future__ import annotations

import typing as t

import marshmallow as ma

from audience_sync.core.identity import Identity
from audience_sync.errors import InvalidPayloadError
from audience_sync.firehose.messages import (
    AUDIENCE_MEMBERSHIP_CHANGE_REQUEST,
    AUDIENCE_SUBSCRIPTION_REQUEST,
    ENCODINGS,
    MEMBERSHIP_ACTIONS,
    MODULE_REGISTRATION_REQUEST,
    REQUEST_TYPES,
    SUBSCRIPTION_ACTIONS,
    Account,
    AudienceChange,
    MembershipChangeRequest,
    Message,
    RegistrationRequest,
    SubscriptionRequest,
    UserAttribute,
    UserProfile,
)
from audience_sync.firehose.schemas import (
    INT64_MAX,
    INT64_MIN,
    MAX_MESSAGE_ID_LENGTH,
    MAX_MPID_LENGTH,
    MAX_TIMESTAMP_MS,
    SCHEMAS,
    EnvelopeSchema,
    is_storable_text,
    user_attribute_or_none,
)

_SCHEMA_INSTANCES: dict[str, EnvelopeSchema] = {kind: cls() for kind, cls in SCHEMAS.items()}


def load_message(data: object) -> Message:
    """Validate a decoded body and build its message.

    Raises:
        InvalidPayloadError: 400 when the body is not an object or its ``type`` is unknown;
            422 with marshmallow's nested field messages for every other schema error.
    """
    if not isinstance(data, dict):
        raise InvalidPayloadError(
            "request body must be a JSON object", {"_schema": ["Invalid input type."]}
        )
    kind = data.get("type")
    if kind is None:
        raise InvalidPayloadError(
            "invalid Firehose message", {"type": ["Missing data for required field."]}, 422
        )
    if not isinstance(kind, str):
        raise InvalidPayloadError(
            "invalid Firehose message", {"type": ["Not a valid string."]}, 422
        )
    if kind not in _SCHEMA_INSTANCES:
        raise InvalidPayloadError(
            "unknown Firehose message type",
            {"type": [f"Must be one of: {', '.join(REQUEST_TYPES)}."]},
        )
    message = fast_load(data)
    if message is not None:
        return message
    try:
        loaded: Message = _SCHEMA_INSTANCES[kind].load(data)
    except ma.ValidationError as exc:
        raise InvalidPayloadError(
            "invalid Firehose message", _stringify_keys(exc.messages), 422
        ) from exc
    return loaded


def _stringify_keys(messages: t.Any) -> t.Any:
    """Marshmallow keys list errors by int index; JSON keys are strings."""
    if isinstance(messages, dict):
        return {str(k): _stringify_keys(v) for k, v in messages.items()}
    return messages


# --- fast path --------------------------------------------------------------------------------


class _Decline(Exception):
    """The fast path is not sure: let the schema decide."""


def _text(value: object) -> str:
    if type(value) is not str or not is_storable_text(value):
        raise _Decline
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _int64(value: object) -> int:
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise _Decline
    return value


def _choice(value: object, choices: tuple[str, ...]) -> str:
    if type(value) is not str or value not in choices:
        raise _Decline
    return value


def _object(value: object) -> dict[str, t.Any]:
    if type(value) is not dict:
        raise _Decline
    return value


def _list(value: object) -> list[t.Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise _Decline
    return value


def _envelope(data: dict[str, t.Any]) -> dict[str, t.Any]:
    message_id = _text(data.get("id"))
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise _Decline
    timestamp_ms = data.get("timestamp_ms")
    if timestamp_ms is not None and (
        type(timestamp_ms) is not int or not 0 <= timestamp_ms <= MAX_TIMESTAMP_MS
    ):
        raise _Decline
    return {
        "type": data["type"],
        "id": message_id,
        "timestamp_ms": timestamp_ms,
        "firehose_version": _optional_text(data.get("firehose_version")),
    }


def _account(value: object) -> Account:
    account = _object(value)
    settings = account.get("account_settings")
    if settings is not None:
        settings = dict(_object(settings))
        for key, setting in settings.items():
            _text(key)
            if type(setting) is str:
                _text(setting)
            elif setting is not None and type(setting) not in (bool, int, float):
                raise _Decline
    return Account(account_id=_int64(account.get("account_id")), account_settings=settings)


def _clean(value: str) -> bool:
    return (value.isascii() and "\x00" not in value) or is_storable_text(value)


_ENCODING_SET = frozenset(ENCODINGS)
_MEMBERSHIP_ACTION_SET = frozenset(MEMBERSHIP_ACTIONS)


def _identities(value: object, clean_types: set[str]) -> tuple[Identity, ...]:
    # The hottest loop of a request: checks are inlined. ``clean_types`` remembers the
    # identity types already checked in this request (a handful, repeated on every profile).
    if value is None:
        return ()
    if type(value) is not list:
        raise _Decline
    out: list[Identity] = []
    append = out.append
    for item in value:
        if type(item) is not dict:
            raise _Decline
        kind, encoding, text = item.get("type"), item.get("encoding"), item.get("value")
        if (
            type(kind) is not str
            or type(text) is not str
            or type(encoding) is not str
            or encoding not in _ENCODING_SET
            or not ((text.isascii() and "\x00" not in text) or is_storable_text(text))
        ):
            raise _Decline
        if kind not in clean_types:
            if not _clean(kind):
                raise _Decline
            clean_types.add(kind)
        append(Identity(type=kind, encoding=encoding, value=text))
    return tuple(out)


def _mpid(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is int:
        value = str(value)
    text = _text(value)
    if len(text) > MAX_MPID_LENGTH:
        raise _Decline
    return text


def _user_attributes(value: object) -> tuple[UserAttribute, ...]:
    if type(value) is not list:
        return ()
    return tuple(a for a in map(user_attribute_or_none, value) if a is not None)


def _audience(item: object) -> AudienceChange:
    if type(item) is not dict:
        raise _Decline
    audience_id, name, action = (
        item.get("audience_id"),
        item.get("audience_name"),
        item.get("action"),
    )
    if (
        type(audience_id) is not int
        or not INT64_MIN <= audience_id <= INT64_MAX
        or type(name) is not str
        or not _clean(name)
        or type(action) is not str
        or action not in _MEMBERSHIP_ACTION_SET
    ):
        raise _Decline
    attributes = item.get("user_attributes")
    return AudienceChange(
        audience_id=audience_id,
        audience_name=name,
        action=action,
        user_attributes=_user_attributes(attributes) if attributes else (),
    )


_AudienceKey = tuple[int, str, str]


def _audiences(
    value: object, seen: dict[_AudienceKey, AudienceChange]
) -> tuple[AudienceChange, ...]:
    """The entries; ``seen`` shares one (immutable) value between the profiles of a request
    that name the same audience, name and action without user attributes, so those are
    checked and built once."""
    if value is None:
        return ()
    if type(value) is not list:
        raise _Decline
    out: list[AudienceChange] = []
    append = out.append
    for item in value:
        if type(item) is dict and not item.get("user_attributes"):
            audience_id, name, action = (
                item.get("audience_id"),
                item.get("audience_name"),
                item.get("action"),
            )
            # Exact types first: True == 1 and would otherwise hit the entry of 1.
            if type(audience_id) is int and type(name) is str and type(action) is str:
                key = (audience_id, name, action)
                change = seen.get(key)
                if change is None:
                    change = seen[key] = _audience(item)
                append(change)
                continue
        append(_audience(item))
    return tuple(out)


def _profiles(value: object) -> tuple[UserProfile, ...]:
    clean_types: set[str] = set()
    seen: dict[_AudienceKey, AudienceChange] = {}
    out: list[UserProfile] = []
    append = out.append
    for profile in _list(value):
        if type(profile) is not dict:
            raise _Decline
        get = profile.get
        partner, user, device, mpid = (
            get("partner_identities"),
            get("user_identities"),
            get("device_identities"),
            get("mpid"),
        )
        if partner is not None:
            _identities(partner, clean_types)
        append(
            UserProfile(
                user_identities=() if user is None else _identities(user, clean_types),
                device_identities=() if device is None else _identities(device, clean_types),
                mpid=None if mpid is None else _mpid(mpid),
                audiences=_audiences(get("audiences"), seen),
            )
        )
    return tuple(out)


def fast_load(data: dict[str, t.Any]) -> Message | None:
    """The message, when plain checks of the schema's rules pass; None to defer to the schema."""
    try:
        kind = data.get("type")
        if kind == MODULE_REGISTRATION_REQUEST:
            return RegistrationRequest(**_envelope(data))
        if kind == AUDIENCE_SUBSCRIPTION_REQUEST:
            return SubscriptionRequest(
                **_envelope(data),
                account=_account(data.get("account")),
                audience_id=_int64(data.get("audience_id")),
                audience_name=_text(data.get("audience_name")),
                action=_choice(data.get("action"), SUBSCRIPTION_ACTIONS),
            )
        if kind == AUDIENCE_MEMBERSHIP_CHANGE_REQUEST:
            return MembershipChangeRequest(
                **_envelope(data),
                account=_account(data.get("account")),
                user_profiles=_profiles(data.get("user_profiles")),
            )
    except _Decline:
        return None
    return None
