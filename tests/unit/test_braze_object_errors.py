"""classify_error_type: the wordings Braze uses, and the near misses that must not match."""

from __future__ import annotations

import pytest

from audience_sync.braze.object_errors import ErrorClass, classify_error_type, flag_for

IDENTITY, FIELD, RETRY = ErrorClass.IDENTITY, ErrorClass.FIELD, ErrorClass.RETRY

CASES = [
    # text, class, reason, field
    ("BLACKLISTED_EXTERNAL_USER_ID", IDENTITY, "blacklisted_external_id", None),
    (" blacklisted_external_user_id ", IDENTITY, "blacklisted_external_id", None),
    (
        "provided external_id is blacklisted and disallowed",
        IDENTITY,
        "blacklisted_external_id",
        None,
    ),
    ("User is blacklisted", IDENTITY, "blacklisted_external_id", None),
    ("User is blocklisted", IDENTITY, "blacklisted_external_id", None),
    ("user is block-listed", IDENTITY, "blacklisted_external_id", None),
    ("EXTERNAL_USER_ID_TOO_LARGE", IDENTITY, "external_id_too_large", None),
    ("external_user_id_too_large", IDENTITY, "external_id_too_large", None),
    ("'external_id' must be fewer than 988 bytes", IDENTITY, "external_id_too_large", None),
    ("Invalid external_id", IDENTITY, "invalid_external_id", None),
    ("invalid_external_id", IDENTITY, "invalid_external_id", None),
    ("'external_id' is not valid", IDENTITY, "invalid_external_id", None),
    ("a valid identifier is required", IDENTITY, "missing_identifier", None),
    ("'external_id' is required", IDENTITY, "missing_identifier", None),
    (
        "'external_id' or 'braze_id' or 'user_alias' is required",
        IDENTITY,
        "missing_identifier",
        None,
    ),
    ("user not found for external_id", RETRY, "user_not_found", None),
    ("EMAIL_BAD_FORMAT", FIELD, "invalid_email", "email"),
    (
        "The value provided for the 'email' field is not a valid email.",
        FIELD,
        "invalid_email",
        "email",
    ),
    ("The value provided for email is not a valid email address.", FIELD, "invalid_email", "email"),
    ("Invalid email address", FIELD, "invalid_email", "email"),
    ("BAD_PUSH_TOKEN_APP_ID", FIELD, "invalid_push_token", "push_tokens"),
    ("BAD_PUSH_TOKEN_SOMETHING_NEW", FIELD, "invalid_push_token", "push_tokens"),
    ("push_tokens must be an array of objects", FIELD, "invalid_push_token", "push_tokens"),
    ("'quantity' is not valid", FIELD, "invalid_attribute", "quantity"),
    ("'In Ibiza Dreamers' is invalid", FIELD, "invalid_attribute", "In Ibiza Dreamers"),
    ("INVALID_ATTRIBUTE_FAVORITE_COLOR", FIELD, "invalid_attribute", "favorite_color"),
    ("'attributes' object could not be processed, please retry", RETRY, "object_error", None),
    (
        "The property '#/' did not contain a required property of 'product_id'",
        RETRY,
        "object_error",
        None,
    ),
    ("SOME_TRANSIENT_ATTR_ERROR", RETRY, "object_error", None),
    ("x" * 5000 + " blacklisted", RETRY, "object_error", None),
]


@pytest.mark.parametrize(
    ("text", "error_class", "reason", "field"),
    CASES,
    ids=[c[0][:40] for c in CASES],
)
def test_error_types(text, error_class, reason, field):
    meaning = classify_error_type(text)
    assert (meaning.error_class, meaning.reason, meaning.field) == (error_class, reason, field)


@pytest.mark.parametrize(
    ("field", "flag"),
    [("email", "invalid_email"), ("push_tokens", "invalid_push_token"), ("x", "invalid_attribute")],
)
def test_flag_for(field, flag):
    assert flag_for(field) == flag
