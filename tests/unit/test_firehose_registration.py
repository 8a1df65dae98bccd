"""The module registration content describes every setting of SPEC §3.4."""

from __future__ import annotations

from audience_sync.core.connection import DEFAULTS, parse_connection_settings
from audience_sync.firehose.registration import registration_content

SPEC_SETTING_IDS = [
    "apiKey",
    "apiKeyOperatingSystem",
    "sendSegmentsAs",
    "restApiKey",
    "externalIdentityType",
    "emailIdentityType",
    "brazeInstance",
    "customRestEndpoint",
    "cleanupOnRemove",
    "updateExistingOnly",
]


def test_every_account_setting_is_described():
    settings = registration_content("1.2.3")["audience_processing_registration"]["account_settings"]
    assert [s["id"] for s in settings] == SPEC_SETTING_IDS
    for setting in settings:
        assert set(setting) >= {"type", "id", "name", "description", "default_value", "required"}
        assert setting["type"] in ("text", "boolean")
        assert setting["name"] and setting["description"]
    by_id = {s["id"]: s for s in settings}
    assert [s["id"] for s in settings if s["confidential"]] == ["restApiKey"]
    assert [s["id"] for s in settings if s["required"]] == ["restApiKey"]
    assert by_id["cleanupOnRemove"]["type"] == "boolean"
    assert by_id["cleanupOnRemove"]["default_value"] is False
    assert by_id["sendSegmentsAs"]["default_value"] == DEFAULTS["sendSegmentsAs"] == "string"
    assert "US-03" in by_id["brazeInstance"]["description"]


def test_the_documented_defaults_parse_as_valid_settings():
    settings = registration_content("1")["audience_processing_registration"]["account_settings"]
    defaults = {
        s["id"]: str(s["default_value"]).lower() if s["type"] == "boolean" else s["default_value"]
        for s in settings
    }
    defaults["restApiKey"] = "key"
    assert parse_connection_settings(1, defaults).errors == ()


def test_permissions():
    permissions = registration_content("1")["permissions"]
    user_types = [i["type"] for i in permissions["user_identities"]]
    assert user_types == [
        "customer",
        "email",
        "other",
        *(f"other{n}" for n in range(2, 11)),
        "mobile_number",
    ]
    assert {i["encoding"] for i in permissions["user_identities"]} == {"raw"}
    assert [i["type"] for i in permissions["device_identities"]] == [
        "apple_push_notification_token",
        "google_cloud_messaging_token",
        "ios_advertising_id",
        "ios_vendor_id",
        "google_advertising_id",
        "android_id",
    ]
    assert {i["encoding"] for i in permissions["device_identities"]} == {"raw"}
    assert permissions["allow_access_mpid"] is True
