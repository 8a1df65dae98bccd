"""The ``module_registration_response`` content (SPEC §3.2): who we are, which identities we
need, and the account settings of SPEC §3.4 as mParticle shows them to its users.

Firehose has no dropdown setting type, so enumerations are text fields whose description lists
the accepted values; :func:`audience_sync.core.connection.parse_connection_settings` validates them.
"""

from __future__ import annotations

import typing as t

from audience_sync.core.connection import DEFAULTS, EMAIL_IDENTITY_TYPES, EXTERNAL_IDENTITY_TYPES

MODULE_NAME = "audience-sync"
MODULE_DESCRIPTION = (
    "Writes mParticle audience membership to Braze as custom attributes "
    "(<code>SegmentMembership</code>, <code>SegmentMembershipArray</code> or "
    "<code>In &lt;audience name&gt;</code>), sending only what changed."
)

USER_IDENTITY_TYPES = (
    "customer",
    "email",
    "other",
    *(f"other{n}" for n in range(2, 11)),
    "mobile_number",
)
DEVICE_IDENTITY_TYPES = (
    "apple_push_notification_token",
    "google_cloud_messaging_token",
    "ios_advertising_id",
    "ios_vendor_id",
    "google_advertising_id",
    "android_id",
)

BRAZE_INSTANCES = (
    *(f"US-0{n}" for n in range(1, 9)),
    "US-10",
    "EU-01",
    "EU-02",
    "AU-01",
    "ID-01",
    "JP-01",
    "KR-01",
)


def _text(
    setting_id: str,
    name: str,
    description: str,
    *,
    required: bool = False,
    confidential: bool = False,
) -> dict[str, t.Any]:
    return {
        "type": "text",
        "id": setting_id,
        "name": name,
        "description": description,
        "default_value": DEFAULTS.get(setting_id, ""),
        "visible": True,
        "required": required,
        "confidential": confidential,
    }


def _boolean(setting_id: str, name: str, description: str) -> dict[str, t.Any]:
    default = DEFAULTS[setting_id] == "true"
    return {
        "type": "boolean",
        "id": setting_id,
        "name": name,
        "description": description,
        "default_value": default,
        "visible": True,
        "required": False,
        "confidential": False,
    }


ACCOUNT_SETTINGS: tuple[dict[str, t.Any], ...] = (
    _text(
        "apiKey",
        "Braze App Identifier",
        "The Braze app identifier (API key of the app); used as app_id of forwarded push tokens.",
    ),
    _text(
        "apiKeyOperatingSystem",
        "App Identifier Operating System",
        "Which push tokens are forwarded: unselected (none), ios "
        "(apple_push_notification_token), android (google_cloud_messaging_token) or web "
        "(none). Case-insensitive.",
    ),
    _text(
        "sendSegmentsAs",
        "Send Segments As",
        "string (SegmentMembership), array (SegmentMembershipArray), per_segment "
        "(In <audience name>), or a '+'-joined combination such as array+string+per_segment. "
        "mParticle's labels are accepted too: Single Attribute, One Attribute Per Segment, "
        "Both Single Attribute and One Attribute Per Segment.",
    ),
    _text(
        "restApiKey",
        "Braze REST API Key",
        "A Braze REST API key with the users.track permission.",
        required=True,
        confidential=True,
    ),
    _text(
        "externalIdentityType",
        "External Identity Type",
        "The user identity whose raw value becomes the Braze external_id: "
        + ", ".join(EXTERNAL_IDENTITY_TYPES)
        + ". Users without it are not written.",
    ),
    _text(
        "emailIdentityType",
        "Email Identity Type",
        "The user identity whose raw value is written as the Braze email: "
        + ", ".join(EMAIL_IDENTITY_TYPES)
        + ".",
    ),
    _text(
        "brazeInstance",
        "Braze Instance",
        "Your Braze cluster: "
        + ", ".join(BRAZE_INSTANCES)
        + " (labels such as 'US 03 Cluster' are accepted), or custom.",
    ),
    _text(
        "customRestEndpoint",
        "Custom REST Endpoint",
        "For the custom instance only: the Braze REST host (https is assumed) or URL.",
    ),
    _boolean(
        "cleanupOnRemove",
        "Clean Up On Remove",
        "When an audience is removed from this connection, clear its attributes from every "
        "recorded member.",
    ),
    _boolean(
        "updateExistingOnly",
        "Update Existing Users Only",
        "Only update users that already exist in Braze (never create users).",
    ),
)


def registration_content(version: str) -> dict[str, t.Any]:
    """Everything of the response but the envelope (type, id, timestamp, firehose version)."""
    return {
        "name": MODULE_NAME,
        "description": MODULE_DESCRIPTION,
        "version": version,
        "permissions": {
            "user_identities": [
                {"type": identity, "encoding": "raw", "required": False}
                for identity in USER_IDENTITY_TYPES
            ],
            "device_identities": [
                {"type": identity, "encoding": "raw", "required": False}
                for identity in DEVICE_IDENTITY_TYPES
            ],
            "allow_access_mpid": True,
        },
        "audience_processing_registration": {
            "account_settings": [dict(setting) for setting in ACCOUNT_SETTINGS],
        },
    }
