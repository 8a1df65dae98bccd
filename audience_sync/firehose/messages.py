"""Validated Firehose messages (SPEC §3.2): frozen values built by :mod:`.schemas`.

Only what the engine uses is kept; unknown fields were ignored on the way in. Optional fields
that were absent or null are ``None`` (scalars) or empty tuples (lists).
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from audience_sync.core.identity import Identity
from audience_sync.core.states import SubscriptionAction

MODULE_REGISTRATION_REQUEST = "module_registration_request"
AUDIENCE_SUBSCRIPTION_REQUEST = "audience_subscription_request"
AUDIENCE_MEMBERSHIP_CHANGE_REQUEST = "audience_membership_change_request"
REQUEST_TYPES = (
    MODULE_REGISTRATION_REQUEST,
    AUDIENCE_SUBSCRIPTION_REQUEST,
    AUDIENCE_MEMBERSHIP_CHANGE_REQUEST,
)
RESPONSE_TYPE = {
    MODULE_REGISTRATION_REQUEST: "module_registration_response",
    AUDIENCE_SUBSCRIPTION_REQUEST: "audience_subscription_response",
    AUDIENCE_MEMBERSHIP_CHANGE_REQUEST: "audience_membership_change_response",
}

ENCODINGS = ("raw", "md5", "sha1", "sha256")
SUBSCRIPTION_ACTIONS = tuple(SubscriptionAction)
MEMBERSHIP_ACTIONS = ("add", "delete", "attribute_update")

SettingValue = str | int | float | bool | None


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """Fields every Firehose message carries."""

    type: str
    id: str
    timestamp_ms: int | None = None
    firehose_version: str | None = None


@dataclass(frozen=True, kw_only=True)
class RegistrationRequest(Envelope):
    """``module_registration_request``: mParticle asks what this integration is."""


@dataclass(frozen=True, kw_only=True)
class Account:
    """One mParticle configuration; ``account_settings`` is None when the sender left it out."""

    account_id: int
    account_settings: t.Mapping[str, SettingValue] | None = None


@dataclass(frozen=True, kw_only=True)
class SubscriptionRequest(Envelope):
    """``audience_subscription_request``: an audience is added, renamed or removed."""

    account: Account
    audience_id: int
    audience_name: str
    action: str


# Built per profile of every request (500 per request): plain slotted dataclasses, three times
# cheaper to build than frozen ones. Read only by convention, like every validated value.
@dataclass(kw_only=True, slots=True)
class UserAttribute:
    """A well-formed ``user_attributes`` entry (malformed ones are skipped, SPEC §3.1)."""

    key: str
    value: str | None = None
    action: str | None = None


# Built per profile of every request (500 per request): plain slotted dataclasses, three times
# cheaper to build than frozen ones. Read only by convention, like every validated value.
@dataclass(kw_only=True, slots=True)
class AudienceChange:
    """One ``audiences[]`` entry of a profile."""

    audience_id: int
    audience_name: str
    action: str
    user_attributes: tuple[UserAttribute, ...] = ()


# Built per profile of every request (500 per request): plain slotted dataclasses, three times
# cheaper to build than frozen ones. Read only by convention, like every validated value.
@dataclass(kw_only=True, slots=True)
class UserProfile:
    """One ``user_profiles[]`` entry; partner identities are validated but not kept."""

    user_identities: tuple[Identity, ...] = ()
    device_identities: tuple[Identity, ...] = ()
    mpid: str | None = None
    audiences: tuple[AudienceChange, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MembershipChangeRequest(Envelope):
    """``audience_membership_change_request``; no profiles is mParticle's verification NOOP."""

    account: Account
    user_profiles: tuple[UserProfile, ...] = ()


Message = RegistrationRequest | SubscriptionRequest | MembershipChangeRequest
