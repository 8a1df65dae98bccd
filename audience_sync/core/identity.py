"""Which Braze user a Firehose profile is (SPEC §4.2): pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from audience_sync.core.connection import ConnectionSettings

MAX_EXTERNAL_ID_BYTES = 987
REASON_NO_EXTERNAL_ID = "no_external_id"
REASON_EXTERNAL_ID_TOO_LARGE = "external_id_too_large"


# Built per profile of every request (500 per request): plain slotted dataclasses, three times
# cheaper to build than frozen ones. Read only by convention, like every validated value.
@dataclass(kw_only=True, slots=True)
class Identity:
    """One ``{type, encoding, value}`` entry of a Firehose profile."""

    type: str
    encoding: str
    value: str

    @property
    def is_raw(self) -> bool:
        """Hashed identities (md5, sha1, sha256) cannot be written to Braze."""
        return self.encoding.lower() == "raw"


# Built per profile of every request (500 per request): plain slotted dataclasses, three times
# cheaper to build than frozen ones. Read only by convention, like every validated value.
@dataclass(kw_only=True, slots=True)
class ResolvedUser:
    """The Braze-facing identity of a profile for one connection."""

    external_id: str
    email: str | None = None
    push_tokens: tuple[str, ...] = ()
    mpid: str | None = None


@dataclass(frozen=True, kw_only=True)
class Unresolved:
    """A profile that cannot be written to Braze, and why (a counted reason)."""

    reason: str


def _raw_value(identities: Iterable[Identity], wanted: str) -> str | None:
    for identity in identities:
        if identity.type.lower() == wanted and identity.is_raw and identity.value:
            return identity.value
    return None


def resolve_user(
    settings: ConnectionSettings,
    *,
    user_identities: Iterable[Identity],
    device_identities: Iterable[Identity] = (),
    mpid: str | None = None,
) -> ResolvedUser | Unresolved:
    """Pick ``external_id`` (raw value of ``externalIdentityType``, or the mpid), the email and
    the push tokens allowed by ``apiKeyOperatingSystem``."""
    user_identities = list(user_identities)
    if settings.external_identity_type == "mpid":
        external_id = mpid or None
    else:
        external_id = _raw_value(user_identities, settings.external_identity_type)
    if not external_id:
        return Unresolved(reason=REASON_NO_EXTERNAL_ID)
    if len(external_id.encode("utf-8")) > MAX_EXTERNAL_ID_BYTES:
        return Unresolved(reason=REASON_EXTERNAL_ID_TOO_LARGE)
    email = None
    if settings.email_identity_type != "none":
        email = _raw_value(user_identities, settings.email_identity_type)
    tokens: tuple[str, ...] = ()
    token_type = settings.push_token_type
    if token_type:
        seen: dict[str, None] = {}
        for identity in device_identities:
            if identity.type.lower() == token_type and identity.is_raw and identity.value:
                seen.setdefault(identity.value, None)
        tokens = tuple(seen)
    return ResolvedUser(external_id=external_id, email=email, push_tokens=tokens, mpid=mpid)
