"""Builders of Firehose request bodies, for tests, the benchmark and demos.

They produce plain dicts as mParticle sends them (JSON-ready), with valid defaults that can be
overridden; nothing here touches the database.
"""

from __future__ import annotations

import typing as t
import uuid
from collections.abc import Iterable, Mapping

TEST_REST_API_KEY = "test-rest-api-key"


def account_settings(**overrides: str) -> dict[str, str]:
    """Valid connection settings (US-03, string format), as mParticle sends them (strings)."""
    settings = {
        "apiKey": "test-app-id",
        "restApiKey": TEST_REST_API_KEY,
        "brazeInstance": "US-03",
        "sendSegmentsAs": "string",
        "externalIdentityType": "customer",
        "emailIdentityType": "email",
        "apiKeyOperatingSystem": "unselected",
        "cleanupOnRemove": "false",
        "updateExistingOnly": "false",
    }
    settings.update(overrides)
    return settings


def identity(identity_type: str, value: str, encoding: str = "raw") -> dict[str, str]:
    """One ``{type, encoding, value}`` identity."""
    return {"type": identity_type, "encoding": encoding, "value": value}


def audience_change(
    audience_id: int, action: str = "add", name: str | None = None
) -> dict[str, t.Any]:
    """One ``audiences[]`` entry of a profile."""
    return {
        "audience_id": audience_id,
        "audience_name": name if name is not None else f"Audience {audience_id}",
        "action": action,
    }


def profile(
    customer_id: str | None = None,
    audiences: Iterable[Mapping[str, t.Any]] = (),
    *,
    email: str | None = None,
    mpid: str | None = None,
    apns_token: str | None = None,
    gcm_token: str | None = None,
    extra_identities: Iterable[Mapping[str, str]] = (),
) -> dict[str, t.Any]:
    """One ``user_profiles[]`` entry; only the given identities are present."""
    user_identities = []
    if customer_id is not None:
        user_identities.append(identity("customer", customer_id))
    if email is not None:
        user_identities.append(identity("email", email))
    user_identities.extend(dict(i) for i in extra_identities)
    device_identities = []
    if apns_token is not None:
        device_identities.append(identity("apple_push_notification_token", apns_token))
    if gcm_token is not None:
        device_identities.append(identity("google_cloud_messaging_token", gcm_token))
    body: dict[str, t.Any] = {"audiences": [dict(a) for a in audiences]}
    if user_identities:
        body["user_identities"] = user_identities
    if device_identities:
        body["device_identities"] = device_identities
    if mpid is not None:
        body["mpid"] = mpid
    return body


def membership_request(
    account_id: int,
    profiles: Iterable[Mapping[str, t.Any]] = (),
    *,
    message_id: str | None = None,
    timestamp_ms: int | None = None,
    settings: Mapping[str, t.Any] | None = None,
    firehose_version: str = "3.2.0",
) -> dict[str, t.Any]:
    """An ``audience_membership_change_request``; no profiles is a verification NOOP."""
    body: dict[str, t.Any] = {
        "type": "audience_membership_change_request",
        "id": message_id or str(uuid.uuid4()),
        "firehose_version": firehose_version,
        "account": {
            "account_id": account_id,
            "account_settings": dict(settings) if settings is not None else account_settings(),
        },
        "user_profiles": [dict(p) for p in profiles],
    }
    if timestamp_ms is not None:
        body["timestamp_ms"] = timestamp_ms
    return body


def subscription_request(
    account_id: int,
    audience_id: int,
    action: str = "add",
    name: str | None = None,
    *,
    message_id: str | None = None,
    timestamp_ms: int | None = None,
    settings: Mapping[str, t.Any] | None = None,
) -> dict[str, t.Any]:
    """An ``audience_subscription_request``."""
    body: dict[str, t.Any] = {
        "type": "audience_subscription_request",
        "id": message_id or str(uuid.uuid4()),
        "firehose_version": "3.2.0",
        "account": {
            "account_id": account_id,
            "account_settings": dict(settings) if settings is not None else account_settings(),
        },
        "audience_id": audience_id,
        "audience_name": name if name is not None else f"Audience {audience_id}",
        "action": action,
    }
    if timestamp_ms is not None:
        body["timestamp_ms"] = timestamp_ms
    return body
