"""Classify the ``type`` of one ``errors`` entry of a ``/users/track`` answer (pure, SPEC §5.3).

Braze words the same failure several ways: the documented symbols (``EMAIL_BAD_FORMAT``,
``EXTERNAL_USER_ID_TOO_LARGE``, ``BAD_PUSH_TOKEN_*``: the post_user_track "Endpoint-specific
errors" table) and the sentences live Braze actually returns (``'external_id' must be fewer than
988 bytes``, ``The value provided for the 'email' field is not a valid email.``, ``provided
external_id is blacklisted and disallowed``). So errors are matched by pattern, never by exact
text; every form seen is kept as a fixture in ``tests/fixtures/braze_responses/``.

Three answers, one per :class:`ErrorClass`:

- ``IDENTITY``: the user itself is refused (blocklisted, too long, missing or invalid
  ``external_id``). Resending it can never succeed: dead-letter it.
- ``FIELD``: one value is refused (a malformed email, a bad push token, an attribute value Braze
  will not take). The rest of the user's object is fine: resend it without that field.
- ``RETRY``: anything else, including ``user not found for external_id`` (a profile not yet
  visible is a transient state, not a permanent one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

MAX_MATCHED_CHARS = 1000
"""Only this much of an error text is matched: Braze's are short; a huge one is not Braze's."""

IDENTITY_FIELDS = frozenset({"external_id", "braze_id", "user_alias", "user_id"})
"""Fields that identify the user: an error naming one of them is an identity error."""

_NOT_FIELDS = frozenset({"attributes", "events", "purchases"})
"""Array names Braze quotes in whole-object errors (``'attributes' object could not ...``)."""


class ErrorClass(StrEnum):
    """What one indexed error means for its object (values equal their names)."""

    IDENTITY = "IDENTITY"
    FIELD = "FIELD"
    RETRY = "RETRY"


@dataclass(frozen=True, kw_only=True)
class ErrorMeaning:
    """The meaning of one error ``type``.

    Attributes:
        error_class: one of :class:`ErrorClass`.
        reason: snake_case counter reason (``external_id_too_large``, ``invalid_email`` ...).
        field: for ``FIELD``, the attribute Braze refused (``email``, ``push_tokens`` ...).
    """

    error_class: ErrorClass
    reason: str
    field: str | None = None


# -- identity ------------------------------------------------------------------------------------

_IDENTITY_SYMBOLS = {
    "BLACKLISTED_EXTERNAL_USER_ID": "blacklisted_external_id",
    "BLOCKLISTED_EXTERNAL_USER_ID": "blacklisted_external_id",
    "EXTERNAL_USER_ID_TOO_LARGE": "external_id_too_large",
    "MISSING_EXTERNAL_USER_ID": "missing_identifier",
    "INVALID_EXTERNAL_ID": "invalid_external_id",
    "INVALID_EXTERNAL_USER_ID": "invalid_external_id",
}
_EXTERNAL_ID = r"external[\s_-]*(?:user[\s_-]*)?id"
_IDENTITY_PATTERNS = (
    (re.compile(r"(?:black|block|deny)[\s_-]*list", re.I), "blacklisted_external_id"),
    (
        re.compile(_EXTERNAL_ID + r".*?(?:too[\s_-]*(?:large|long)|exceed|fewer than|bytes)", re.I),
        "external_id_too_large",
    ),
    (re.compile(r"invalid[\s_'\"`]*" + _EXTERNAL_ID, re.I), "invalid_external_id"),
    (
        re.compile(_EXTERNAL_ID + r"['\"`]?\s+(?:is|was)\s+(?:not\s+valid|invalid)", re.I),
        "invalid_external_id",
    ),
    (re.compile(r"valid\s+(?:user\s+)?identifier\s+is\s+required", re.I), "missing_identifier"),
    (re.compile(r"no\s+(?:user\s+)?identifier", re.I), "missing_identifier"),
    (
        re.compile(
            r"(?:external_id|braze_id|user_alias|identifier)\b.*\b(?:is|are)\s+required", re.I
        ),
        "missing_identifier",
    ),
)
# Checked first: these mention external_id but are transient (rudder-transformer dropped its
# "user.?not.?found" abort for this reason: a profile may simply not be visible yet).
_RETRY_PATTERNS = ((re.compile(r"\bnot\s+found\b", re.I), "user_not_found"),)

# -- one field -----------------------------------------------------------------------------------

_FIELD_SYMBOLS = {
    "EMAIL_BAD_FORMAT": "email",
    "BAD_EMAIL_SUBSCRIPTION_STATE": "email_subscribe",
    "BAD_PUSH_SUBSCRIPTION_STATE": "push_subscribe",
    "BAD_LOCATION_UPDATE": "current_location",
    "BAD_DEVICE_ID": "push_tokens",
    "INVALID_ATTRIBUTE_EMAIL_SUBSCRIPTION_INFO": "email_subscription_info",
}
_FIELD_SYMBOL_PREFIXES = (
    ("BAD_PUSH_TOKEN", "push_tokens"),
    ("BAD_SUBSCRIPTION_GROUP", "subscription_groups"),
)
_QUOTED = r"['\"`](?P<field>[^'\"`]{1,255})['\"`]"
_FIELD_PATTERNS = (
    # "The value provided for the 'email' field is not a valid email." (live Braze)
    re.compile(
        r"value provided for (?:the )?" + _QUOTED + r"(?: field)? is not (?:a )?valid", re.I
    ),
    # "The value provided for email is not a valid email address." (Braze docs)
    re.compile(r"value provided for (?:the )?(?P<field>\w+)(?: field)? is not (?:a )?valid", re.I),
    # "'quantity' is not valid", "'email_subscribe' must be one of ...", "'dob' is invalid"
    re.compile(r"^\s*" + _QUOTED + r"\s+(?:is not valid|is invalid|must be|must not)", re.I),
    re.compile(r"invalid value for (?:the )?(?:attribute |field )?" + _QUOTED, re.I),
    re.compile(r"(?:^|\b)(?:invalid|bad)[\s_]+(?P<field>email|phone)\b", re.I),
    re.compile(r"\b(?P<field>email|phone)(?: address)? is (?:not valid|invalid)", re.I),
)
_PUSH_TOKEN_TEXT = re.compile(r"push[\s_]*tokens?\b.*\b(?:invalid|not valid|must)", re.I)

FIELD_FLAGS = {
    "email": "invalid_email",
    "push_tokens": "invalid_push_token",
    "phone": "invalid_phone",
}
"""The flag (and counter reason) a refused field puts on the user; others: ``invalid_attribute``."""


def flag_for(field: str) -> str:
    """The user flag for a refused ``field`` (``email`` -> ``invalid_email``)."""
    return FIELD_FLAGS.get(field, "invalid_attribute")


def _field_of(text: str, symbol: str) -> str | None:
    if symbol in _FIELD_SYMBOLS:
        return _FIELD_SYMBOLS[symbol]
    for prefix, field in _FIELD_SYMBOL_PREFIXES:
        if symbol.startswith(prefix):
            return field
    if symbol.startswith("INVALID_ATTRIBUTE_") and len(symbol) > len("INVALID_ATTRIBUTE_"):
        return symbol[len("INVALID_ATTRIBUTE_") :].lower()
    for pattern in _FIELD_PATTERNS:
        match = pattern.search(text)
        if match:
            name = match.group("field").strip()
            if name.lower() in ("email", "phone"):
                name = name.lower()
            return name
    if _PUSH_TOKEN_TEXT.search(text):
        return "push_tokens"
    return None


def classify_error_type(error_type: object) -> ErrorMeaning:
    """Classify the ``type`` of one ``errors`` entry (any value: Braze's, or garbage).

    Returns:
        ``IDENTITY`` (dead-letter the user), ``FIELD`` (resend without ``field``) or ``RETRY``.
    """
    text = error_type[:MAX_MATCHED_CHARS] if isinstance(error_type, str) else ""
    symbol = text.strip().upper()
    if symbol in _IDENTITY_SYMBOLS:
        return ErrorMeaning(error_class=ErrorClass.IDENTITY, reason=_IDENTITY_SYMBOLS[symbol])
    for pattern, reason in _RETRY_PATTERNS:
        if pattern.search(text):
            return ErrorMeaning(error_class=ErrorClass.RETRY, reason=reason)
    for pattern, reason in _IDENTITY_PATTERNS:
        if pattern.search(text):
            return ErrorMeaning(error_class=ErrorClass.IDENTITY, reason=reason)
    field = _field_of(text, symbol)
    if field is not None and field.lower() in IDENTITY_FIELDS:
        return ErrorMeaning(error_class=ErrorClass.IDENTITY, reason="invalid_external_id")
    if field is not None and field.lower() not in _NOT_FIELDS:
        return ErrorMeaning(error_class=ErrorClass.FIELD, reason=flag_for(field), field=field)
    return ErrorMeaning(error_class=ErrorClass.RETRY, reason="object_error")
