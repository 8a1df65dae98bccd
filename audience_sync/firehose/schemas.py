"""Marshmallow schemas of the Firehose requests (SPEC §3.1, §3.2): the contract.

Everything is optional except what the SDK's schemas require: the envelope's ``type`` and
``id``; ``account.account_id`` on subscription and membership messages; ``audience_id``,
``audience_name`` and ``action`` on subscriptions and on each ``audiences[]`` entry; ``type``,
``encoding`` and ``value`` on each identity. Unknown fields are ignored, null optional fields
count as absent, and a malformed ``user_attributes`` entry (the SDK's sample has ``{}``) is
skipped. Beyond the SDK, values the database could not store are refused here, so that bad
input is a 422 and never a 5xx: text with NUL characters or unpaired surrogates, integers
outside 64 bits, ids longer than their columns.

:mod:`.validation` loads the common valid messages without marshmallow (which is too slow for
500 profiles in 100 ms) and defers to these schemas whenever it is not sure.
"""

from __future__ import annotations

import typing as t

import marshmallow as ma

from audience_sync.core.identity import Identity
from audience_sync.firehose.messages import (
    AUDIENCE_MEMBERSHIP_CHANGE_REQUEST,
    AUDIENCE_SUBSCRIPTION_REQUEST,
    ENCODINGS,
    MEMBERSHIP_ACTIONS,
    MODULE_REGISTRATION_REQUEST,
    SUBSCRIPTION_ACTIONS,
    Account,
    AudienceChange,
    MembershipChangeRequest,
    RegistrationRequest,
    SubscriptionRequest,
    UserAttribute,
    UserProfile,
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_TIMESTAMP_MS = 2**53
"""Largest accepted ``timestamp_ms`` (exact as a float; far beyond any real date)."""
MAX_MESSAGE_ID_LENGTH = 64
"""``firehose_messages.id`` is a VARCHAR(64); a Firehose id is a 36-character UUID."""
MAX_MPID_LENGTH = 64
"""``users.mpid`` is a VARCHAR(64); an mpid is a signed 64-bit integer as text."""

BAD_TEXT_MESSAGE = "Must not contain NUL characters or unpaired surrogates."


def is_storable_text(value: str) -> bool:
    """Whether both databases can store ``value`` (PostgreSQL refuses NUL; UTF-8 surrogates)."""
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


class Text(ma.fields.String):
    """A string the database can store."""

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any, **kwargs: t.Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not is_storable_text(text):
            raise ma.ValidationError(BAD_TEXT_MESSAGE)
        return text


class Int64(ma.fields.Integer):
    """A JSON integer (not a float, string or boolean) that fits a BIGINT."""

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(strict=True, validate=ma.validate.Range(INT64_MIN, INT64_MAX), **kwargs)


class Mpid(ma.fields.Field):
    """mParticle's id: a string (SPEC §3.2); a JSON integer is accepted and kept as text."""

    default_error_messages = {
        "invalid": "Not a valid mpid: must be a string or an integer.",
        "too_long": f"Longer than {MAX_MPID_LENGTH} characters.",
        "bad_text": BAD_TEXT_MESSAGE,
    }

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any, **kwargs: t.Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.make_error("invalid")
        text = str(value)
        if len(text) > MAX_MPID_LENGTH:
            raise self.make_error("too_long")
        if not is_storable_text(text):
            raise self.make_error("bad_text")
        return text


class SettingValueField(ma.fields.Field):
    """An ``account_settings`` value: mParticle sends strings; other JSON scalars are kept."""

    default_error_messages = {
        "invalid": "Not a valid setting value: must be a string, number, boolean or null.",
        "bad_text": BAD_TEXT_MESSAGE,
    }

    def _deserialize(self, value: t.Any, attr: str | None, data: t.Any, **kwargs: t.Any) -> t.Any:
        if isinstance(value, str):
            if not is_storable_text(value):
                raise self.make_error("bad_text")
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        raise self.make_error("invalid")


def user_attribute_or_none(entry: object) -> UserAttribute | None:
    """A ``user_attributes`` entry, or None when it is malformed (skipped, SPEC §3.1)."""
    if not isinstance(entry, dict):
        return None
    key = entry.get("key")
    value = entry.get("value")
    action = entry.get("action")
    if not isinstance(key, str) or not is_storable_text(key):
        return None
    if value is not None and not (isinstance(value, str) and is_storable_text(value)):
        return None
    if action is not None and not (isinstance(action, str) and is_storable_text(action)):
        return None
    return UserAttribute(key=key, value=value, action=action)


class UserAttributes(ma.fields.Field):
    """``user_attributes``: never an error; malformed entries (or a non-list) are skipped."""

    def _deserialize(
        self, value: t.Any, attr: str | None, data: t.Any, **kwargs: t.Any
    ) -> tuple[UserAttribute, ...]:
        if not isinstance(value, list):
            return ()
        return tuple(a for a in map(user_attribute_or_none, value) if a is not None)


def _optional_list(nested: type[ma.Schema]) -> ma.fields.List:
    return ma.fields.List(ma.fields.Nested(nested), allow_none=True, load_default=None)


class _Schema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE


class IdentitySchema(_Schema):
    """``{type, encoding, value}`` of a user, device or partner identity."""

    type = Text(required=True)
    encoding = ma.fields.String(required=True, validate=ma.validate.OneOf(ENCODINGS))
    value = Text(required=True)

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> Identity:
        return Identity(**data)


class AccountSchema(_Schema):
    """``account``: the mParticle configuration and its settings."""

    account_id = Int64(required=True)
    account_settings = ma.fields.Dict(
        keys=Text(), values=SettingValueField(allow_none=True), allow_none=True, load_default=None
    )

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> Account:
        return Account(**data)


class EnvelopeSchema(_Schema):
    """Fields of every message."""

    type = ma.fields.String(required=True)
    id = Text(required=True, validate=ma.validate.Length(max=MAX_MESSAGE_ID_LENGTH))
    timestamp_ms = ma.fields.Integer(
        strict=True,
        validate=ma.validate.Range(0, MAX_TIMESTAMP_MS),
        allow_none=True,
        load_default=None,
    )
    firehose_version = Text(allow_none=True, load_default=None)


class RegistrationRequestSchema(EnvelopeSchema):
    """``module_registration_request``."""

    type = ma.fields.String(required=True, validate=ma.validate.Equal(MODULE_REGISTRATION_REQUEST))

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> RegistrationRequest:
        return RegistrationRequest(**data)


class SubscriptionRequestSchema(EnvelopeSchema):
    """``audience_subscription_request``."""

    type = ma.fields.String(
        required=True, validate=ma.validate.Equal(AUDIENCE_SUBSCRIPTION_REQUEST)
    )
    account = ma.fields.Nested(AccountSchema, required=True)
    audience_id = Int64(required=True)
    audience_name = Text(required=True)
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(SUBSCRIPTION_ACTIONS))

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> SubscriptionRequest:
        return SubscriptionRequest(**data)


class AudienceChangeSchema(_Schema):
    """One ``audiences[]`` entry of a profile."""

    audience_id = Int64(required=True)
    audience_name = Text(required=True)
    action = ma.fields.String(required=True, validate=ma.validate.OneOf(MEMBERSHIP_ACTIONS))
    user_attributes = UserAttributes(allow_none=True, load_default=())

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> AudienceChange:
        data["user_attributes"] = data["user_attributes"] or ()
        return AudienceChange(**data)


class UserProfileSchema(_Schema):
    """One ``user_profiles[]`` entry."""

    user_identities = _optional_list(IdentitySchema)
    device_identities = _optional_list(IdentitySchema)
    partner_identities = _optional_list(IdentitySchema)
    mpid = Mpid(allow_none=True, load_default=None)
    audiences = _optional_list(AudienceChangeSchema)

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> UserProfile:
        return UserProfile(
            user_identities=tuple(data["user_identities"] or ()),
            device_identities=tuple(data["device_identities"] or ()),
            mpid=data["mpid"],
            audiences=tuple(data["audiences"] or ()),
        )


class MembershipChangeRequestSchema(EnvelopeSchema):
    """``audience_membership_change_request``."""

    type = ma.fields.String(
        required=True, validate=ma.validate.Equal(AUDIENCE_MEMBERSHIP_CHANGE_REQUEST)
    )
    account = ma.fields.Nested(AccountSchema, required=True)
    user_profiles = _optional_list(UserProfileSchema)

    @ma.post_load
    def _make(self, data: dict[str, t.Any], **_: t.Any) -> MembershipChangeRequest:
        data["user_profiles"] = tuple(data["user_profiles"] or ())
        return MembershipChangeRequest(**data)


SCHEMAS: dict[str, type[EnvelopeSchema]] = {
    MODULE_REGISTRATION_REQUEST: RegistrationRequestSchema,
    AUDIENCE_SUBSCRIPTION_REQUEST: SubscriptionRequestSchema,
    AUDIENCE_MEMBERSHIP_CHANGE_REQUEST: MembershipChangeRequestSchema,
}
