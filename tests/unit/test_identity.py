from __future__ import annotations

import pytest

from audience_sync.core.connection import parse_connection_settings
from audience_sync.core.identity import Identity, ResolvedUser, Unresolved, resolve_user


def ident(type_, value, encoding="raw"):
    return Identity(type=type_, encoding=encoding, value=value)


def settings(**kw):
    return parse_connection_settings(1, {"restApiKey": "k", **kw})


@pytest.mark.parametrize(
    ("kw", "identities", "mpid", "expected"),
    [
        ({}, [ident("customer", "c-1")], None, "c-1"),
        ({}, [ident("customer", "abc", "md5")], None, Unresolved(reason="no_external_id")),
        ({}, [], None, Unresolved(reason="no_external_id")),
        ({"externalIdentityType": "email"}, [ident("email", "a@x.io")], None, "a@x.io"),
        ({"externalIdentityType": "other3"}, [ident("other3", "o3")], None, "o3"),
        ({"externalIdentityType": "mpid"}, [], "12345", "12345"),
        (
            {"externalIdentityType": "mpid"},
            [ident("customer", "c")],
            None,
            Unresolved(reason="no_external_id"),
        ),
        ({}, [ident("customer", "x" * 988)], None, Unresolved(reason="external_id_too_large")),
        ({}, [ident("customer", "é" * 493)], None, "é" * 493),  # 986 bytes
    ],
    ids=[
        "customer",
        "hashed",
        "none",
        "email",
        "other3",
        "mpid",
        "mpid-missing",
        "too-large",
        "multibyte-fits",
    ],
)
def test_external_id(kw, identities, mpid, expected):
    result = resolve_user(settings(**kw), user_identities=identities, mpid=mpid)
    if isinstance(expected, Unresolved):
        assert result == expected
    else:
        assert isinstance(result, ResolvedUser) and result.external_id == expected


def test_email_is_raw_only_and_can_be_turned_off():
    ids = [ident("customer", "c"), ident("email", "hash", "sha256")]
    assert resolve_user(settings(), user_identities=ids).email is None
    ids.append(ident("email", "a@x.io"))
    assert resolve_user(settings(), user_identities=ids).email == "a@x.io"
    assert resolve_user(settings(emailIdentityType="none"), user_identities=ids).email is None


def test_push_tokens_follow_the_operating_system():
    devices = [
        ident("apple_push_notification_token", "apns-1"),
        ident("google_cloud_messaging_token", "fcm-1"),
        ident("apple_push_notification_token", "apns-1"),
    ]
    users = [ident("customer", "c")]
    ios = resolve_user(
        settings(apiKeyOperatingSystem="ios"), user_identities=users, device_identities=devices
    )
    android = resolve_user(
        settings(apiKeyOperatingSystem="android"), user_identities=users, device_identities=devices
    )
    none = resolve_user(settings(), user_identities=users, device_identities=devices)
    assert ios.push_tokens == ("apns-1",)
    assert android.push_tokens == ("fcm-1",)
    assert none.push_tokens == ()
