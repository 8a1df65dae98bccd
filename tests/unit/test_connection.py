from __future__ import annotations

import pytest

from audience_sync.core.connection import (
    delivery_changed,
    effective_settings,
    merge_settings,
    parse_connection_settings,
    parse_instance,
    parse_send_segments_as,
    settings_fingerprint,
)

VALID = {"restApiKey": "k", "apiKey": "app"}


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("string", {"string"}),
        ("array", {"array"}),
        ("per_segment", {"per_segment"}),
        ("array+string", {"array", "string"}),
        ("string+per_segment", {"string", "per_segment"}),
        ("array+per_segment", {"array", "per_segment"}),
        ("array+string+per_segment", {"array", "string", "per_segment"}),
        ("Single Attribute", {"string"}),
        ("One Attribute Per Segment", {"per_segment"}),
        ("Both Single Attribute and One Attribute Per Segment", {"string", "per_segment"}),
        (" ARRAY + String ", {"array", "string"}),
        ("strings", None),
        ("string+string", None),
        ("", None),
    ],
)
def test_send_segments_as(raw, parts):
    result = parse_send_segments_as(raw)
    assert (set(result) if result is not None else None) == parts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("US-03", "US-03"),
        ("US 03 Cluster", "US-03"),
        ("us-08", "US-08"),
        ("US-10", "US-10"),
        ("EU-02", "EU-02"),
        ("KR-01", "KR-01"),
        ("custom", "custom"),
        ("US-09", None),
        ("mars-01", None),
    ],
)
def test_instances(raw, expected):
    assert parse_instance(raw) == expected


@pytest.mark.parametrize(
    ("instance", "endpoint"),
    [
        ("US-01", "https://rest.iad-01.braze.com"),
        ("US-08", "https://rest.iad-08.braze.com"),
        ("US-10", "https://rest.us-10.braze.com"),
        ("EU-01", "https://rest.fra-01.braze.eu"),
        ("AU-01", "https://rest.au-01.braze.com"),
        ("ID-01", "https://rest.id-01.braze.com"),
        ("JP-01", "https://rest.jp-01.braze.com"),
        ("KR-01", "https://rest.kr-01.braze.com"),
    ],
)
def test_rest_endpoint_by_instance(instance, endpoint):
    s = parse_connection_settings(1, {**VALID, "brazeInstance": instance})
    assert s.is_valid
    assert s.rest_endpoint == endpoint


def test_defaults():
    s = parse_connection_settings(1, VALID)
    assert s.is_valid
    assert s.parts == {"string"}
    assert s.instance == "US-03"
    assert s.external_identity_type == "customer"
    assert s.email_identity_type == "email"
    assert s.push_token_type is None
    assert not s.cleanup_on_remove and not s.update_existing_only


def test_custom_endpoint_must_be_allowed_or_official():
    allowed = ("http://127.0.0.1:",)
    ok = parse_connection_settings(
        1,
        {**VALID, "brazeInstance": "custom", "customRestEndpoint": "http://127.0.0.1:9000/"},
        allowed_custom_endpoints=allowed,
    )
    assert ok.is_valid and ok.rest_endpoint == "http://127.0.0.1:9000"
    official = parse_connection_settings(
        1, {**VALID, "brazeInstance": "custom", "customRestEndpoint": "rest.iad-99.braze.com"}
    )
    assert official.is_valid and official.rest_endpoint == "https://rest.iad-99.braze.com"
    refused = parse_connection_settings(
        1, {**VALID, "brazeInstance": "custom", "customRestEndpoint": "http://169.254.169.254"}
    )
    assert not refused.is_valid
    assert any(e.startswith("customRestEndpoint") for e in refused.errors)


def test_every_problem_is_reported_with_its_setting_id():
    s = parse_connection_settings(
        1,
        {
            "sendSegmentsAs": "nope",
            "apiKeyOperatingSystem": "windows",
            "externalIdentityType": "twitter",
            "brazeInstance": "XX-99",
            "cleanupOnRemove": "maybe",
        },
    )
    ids = {e.split(":")[0] for e in s.errors}
    assert ids == {
        "sendSegmentsAs",
        "apiKeyOperatingSystem",
        "externalIdentityType",
        "brazeInstance",
        "cleanupOnRemove",
        "restApiKey",
    }


def test_operating_system_picks_the_push_token_type():
    ios = parse_connection_settings(1, {**VALID, "apiKeyOperatingSystem": "iOS"})
    android = parse_connection_settings(1, {**VALID, "apiKeyOperatingSystem": "Android"})
    web = parse_connection_settings(1, {**VALID, "apiKeyOperatingSystem": "web"})
    assert ios.push_token_type == "apple_push_notification_token"
    assert android.push_token_type == "google_cloud_messaging_token"
    assert web.push_token_type is None


def test_local_overrides_win_key_by_key_and_change_the_fingerprint():
    merged = merge_settings(
        {"restApiKey": "from-mparticle", "apiKey": "a"}, {"restApiKey": "local"}
    )
    assert merged == {"restApiKey": "local", "apiKey": "a"}
    assert settings_fingerprint(merged) != settings_fingerprint({"restApiKey": "x", "apiKey": "a"})


def test_rest_key_is_not_in_repr():
    s = parse_connection_settings(1, {"restApiKey": "super-secret"})
    assert "super-secret" not in repr(s)


@pytest.mark.parametrize(
    ("stored", "overrides", "has_overrides", "valid"),
    [
        pytest.param({"restApiKey": "k"}, {}, False, True, id="mparticle-only"),
        pytest.param({}, {"restApiKey": "local"}, True, True, id="override-completes"),
        pytest.param({"restApiKey": "k"}, {"restApiKey": ""}, True, False, id="override-blanks"),
        pytest.param({"restApiKey": None}, {}, False, False, id="null-is-empty"),
    ],
)
def test_effective_settings_merge_parse_and_fingerprint_in_one_place(
    stored, overrides, has_overrides, valid
):
    effective = effective_settings(7, stored, overrides=overrides)
    merged = merge_settings(stored, overrides)
    assert effective.raw == stored  # what mParticle sent is what is stored
    assert effective.has_overrides is has_overrides
    assert effective.settings.is_valid is valid
    assert effective.settings == parse_connection_settings(7, merged)
    assert effective.fingerprint == settings_fingerprint(merged)


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        pytest.param({}, False, id="same"),
        pytest.param({"sendSegmentsAs": "array"}, True, id="format"),
        pytest.param({"apiKey": "other-app"}, True, id="app"),
        pytest.param({"apiKeyOperatingSystem": "ios"}, True, id="platform"),
        pytest.param({"emailIdentityType": "none"}, True, id="email-identity"),
        pytest.param({"updateExistingOnly": "true"}, True, id="update-existing-only"),
        pytest.param({"cleanupOnRemove": "true"}, False, id="cleanup-is-not-delivery"),
    ],
)
def test_delivery_changed_names_what_braze_should_hold(change, changed):
    base = {"restApiKey": "k", "apiKey": "app"}
    old = parse_connection_settings(1, base)
    new = parse_connection_settings(1, {**base, **change})
    assert delivery_changed(old, new) is changed
