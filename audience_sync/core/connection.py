"""Connection settings: mParticle's ``account_settings`` (all strings) parsed and validated
(SPEC §3.3, §3.4). Invalid settings never fail a Firehose request; they come back as a list of
errors that put the connection in the ``invalid_settings`` state.

:func:`effective_settings` is the one derivation of what a connection delivers with: the stored
(or received) account settings, merged with the local ``connections.<id>.*`` overrides, parsed,
and fingerprinted. The intake, the connection repository and the senders all call it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PART_STRING = "string"
PART_ARRAY = "array"
PART_PER_SEGMENT = "per_segment"
PARTS = (PART_STRING, PART_ARRAY, PART_PER_SEGMENT)

# mParticle's native "Send Segments As" labels.
NATIVE_SEGMENT_LABELS = {
    "single attribute": frozenset({PART_STRING}),
    "one attribute per segment": frozenset({PART_PER_SEGMENT}),
    "both single attribute and one attribute per segment": frozenset(
        {PART_STRING, PART_PER_SEGMENT}
    ),
}

OPERATING_SYSTEMS = ("unselected", "ios", "android", "web")
# Which push token each operating system forwards (SPEC §3.4 apiKeyOperatingSystem).
PUSH_TOKEN_TYPE_BY_OS = {
    "ios": "apple_push_notification_token",
    "android": "google_cloud_messaging_token",
}

EXTERNAL_IDENTITY_TYPES = (
    "customer",
    "email",
    "other",
    *(f"other{n}" for n in range(2, 11)),
    "mobile_number",
    "mpid",
)
EMAIL_IDENTITY_TYPES = (*(t for t in EXTERNAL_IDENTITY_TYPES if t != "mpid"), "none")

_INSTANCE_HOSTS = {
    **{f"US-0{n}": f"https://rest.iad-0{n}.braze.com" for n in range(1, 9)},
    "US-10": "https://rest.us-10.braze.com",
    "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu",
    "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com",
    "JP-01": "https://rest.jp-01.braze.com",
    "KR-01": "https://rest.kr-01.braze.com",
}
CUSTOM_INSTANCE = "custom"
_OFFICIAL_HOST = re.compile(r"^https://rest\.[a-z0-9-]+\.braze\.(com|eu)$")

DEFAULTS: Mapping[str, str] = {
    "apiKeyOperatingSystem": "unselected",
    "sendSegmentsAs": "string",
    "externalIdentityType": "customer",
    "emailIdentityType": "email",
    "brazeInstance": "US-03",
    "cleanupOnRemove": "false",
    "updateExistingOnly": "false",
}


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings:
    """The parsed settings of one connection; ``errors`` is empty when it can deliver."""

    account_id: int
    api_key: str = ""
    operating_system: str = "unselected"
    parts: frozenset[str] = frozenset({PART_STRING})
    rest_api_key: str = field(default="", repr=False)
    external_identity_type: str = "customer"
    email_identity_type: str = "email"
    instance: str = "US-03"
    rest_endpoint: str = ""
    cleanup_on_remove: bool = False
    update_existing_only: bool = False
    errors: tuple[str, ...] = ()

    @property
    def is_valid(self) -> bool:
        """Whether deliveries may run for this connection."""
        return not self.errors

    @property
    def push_token_type(self) -> str | None:
        """The device identity type forwarded as a push token, if any."""
        return PUSH_TOKEN_TYPE_BY_OS.get(self.operating_system)

    @property
    def key_fingerprint(self) -> str:
        """sha256 of the REST key: names the Braze workspace without repeating the key."""
        return hashlib.sha256(self.rest_api_key.encode()).hexdigest()


def parse_send_segments_as(raw: str) -> frozenset[str] | None:
    """``"array+string"`` or a native label -> the set of parts; None if not understood."""
    text = raw.strip().lower()
    if text in NATIVE_SEGMENT_LABELS:
        return NATIVE_SEGMENT_LABELS[text]
    pieces = [p.strip().replace(" ", "_").replace("-", "_") for p in text.split("+")]
    if not pieces or any(p not in PARTS for p in pieces) or len(set(pieces)) != len(pieces):
        return None
    return frozenset(pieces)


def parse_instance(raw: str) -> str | None:
    """``"US 03 Cluster"``, ``"us-03"``, ``"US03"`` -> ``"US-03"``; ``"custom"``; else None."""
    text = raw.strip()
    if text.lower() == CUSTOM_INSTANCE:
        return CUSTOM_INSTANCE
    match = re.fullmatch(r"(?i)\s*([a-z]{2})[\s_-]*0*(\d{1,2})(\s+cluster)?\s*", text)
    if not match:
        return None
    name = f"{match.group(1).upper()}-{int(match.group(2)):02d}"
    return name if name in _INSTANCE_HOSTS else None


def custom_endpoint_url(raw: str) -> str:
    """A host (https assumed) or a URL, without trailing slash."""
    text = raw.strip().rstrip("/")
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        text = "https://" + text
    return text


def is_official_braze_endpoint(url: str) -> bool:
    """Whether ``url`` is a Braze REST host (https://rest.<cluster>.braze.com|eu)."""
    return bool(_OFFICIAL_HOST.match(url))


def rest_endpoint_for(
    instance: str, custom: str, allowed_custom_endpoints: tuple[str, ...]
) -> tuple[str, str | None]:
    """The REST base URL of an instance, and an error message (or None).

    A custom endpoint must be an official Braze host or start with one of
    ``braze.allowed_custom_endpoints`` (guards against SSRF).
    """
    if instance != CUSTOM_INSTANCE:
        return _INSTANCE_HOSTS[instance], None
    if not custom.strip():
        return "", "customRestEndpoint: required when brazeInstance is custom"
    url = custom_endpoint_url(custom)
    if is_official_braze_endpoint(url):
        return url, None
    if any(url.startswith(prefix) for prefix in allowed_custom_endpoints):
        return url, None
    return "", (
        "customRestEndpoint: not an official Braze REST host and not allowed by "
        "braze.allowed_custom_endpoints"
    )


def _parse_bool(key: str, raw: str, errors: list[str]) -> bool:
    text = raw.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    errors.append(f"{key}: must be true or false")
    return False


def merge_settings(
    account_settings: Mapping[str, object], overrides: Mapping[str, str]
) -> dict[str, str]:
    """mParticle's settings, then the local ``connections.<id>.*`` overrides key by key."""
    merged = {str(k): ("" if v is None else str(v)) for k, v in account_settings.items()}
    merged.update(overrides)
    return merged


def settings_fingerprint(settings: Mapping[str, str]) -> str:
    """A stable hash of the merged settings: a change resumes a suspended connection."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()


def parse_connection_settings(
    account_id: int,
    settings: Mapping[str, str],
    *,
    allowed_custom_endpoints: tuple[str, ...] = (),
) -> ConnectionSettings:
    """Validate merged account settings; every problem is listed in ``errors``."""
    errors: list[str] = []

    def value(key: str) -> str:
        raw = settings.get(key)
        return DEFAULTS.get(key, "") if raw is None or raw.strip() == "" else raw.strip()

    operating_system = value("apiKeyOperatingSystem").lower()
    if operating_system not in OPERATING_SYSTEMS:
        errors.append("apiKeyOperatingSystem: must be one of unselected, ios, android, web")
        operating_system = "unselected"

    parts = parse_send_segments_as(value("sendSegmentsAs"))
    if parts is None:
        errors.append(
            "sendSegmentsAs: must be string, array, per_segment or a '+'-joined combination"
        )
        parts = frozenset({PART_STRING})

    external_type = value("externalIdentityType").lower()
    if external_type not in EXTERNAL_IDENTITY_TYPES:
        errors.append(f"externalIdentityType: must be one of {', '.join(EXTERNAL_IDENTITY_TYPES)}")
        external_type = "customer"

    email_type = value("emailIdentityType").lower()
    if email_type not in EMAIL_IDENTITY_TYPES:
        errors.append(f"emailIdentityType: must be one of {', '.join(EMAIL_IDENTITY_TYPES)}")
        email_type = "none"

    instance = parse_instance(value("brazeInstance"))
    endpoint = ""
    if instance is None:
        errors.append("brazeInstance: unknown Braze instance")
        instance = DEFAULTS["brazeInstance"]
    else:
        endpoint, error = rest_endpoint_for(
            instance, settings.get("customRestEndpoint", ""), allowed_custom_endpoints
        )
        if error:
            errors.append(error)

    rest_api_key = settings.get("restApiKey", "").strip()
    if not rest_api_key:
        errors.append("restApiKey: required")

    return ConnectionSettings(
        account_id=account_id,
        api_key=settings.get("apiKey", "").strip(),
        operating_system=operating_system,
        parts=parts,
        rest_api_key=rest_api_key,
        external_identity_type=external_type,
        email_identity_type=email_type,
        instance=instance,
        rest_endpoint=endpoint,
        cleanup_on_remove=_parse_bool("cleanupOnRemove", value("cleanupOnRemove"), errors),
        update_existing_only=_parse_bool("updateExistingOnly", value("updateExistingOnly"), errors),
        errors=tuple(errors),
    )


@dataclass(frozen=True, kw_only=True)
class EffectiveSettings:
    """A connection's account settings as received, and what they mean once merged with the
    local overrides."""

    raw: Mapping[str, Any]
    settings: ConnectionSettings
    fingerprint: str
    # The stored settings are mParticle's; the overrides they were merged with are not kept,
    # so with overrides any settings change may change what Braze should hold.
    has_overrides: bool


def effective_settings(
    account_id: int,
    account_settings: Mapping[str, Any],
    *,
    overrides: Mapping[str, str],
    allowed_custom_endpoints: tuple[str, ...] = (),
) -> EffectiveSettings:
    """Merge ``overrides`` over ``account_settings``, parse and fingerprint the result."""
    merged = merge_settings(account_settings, overrides)
    return EffectiveSettings(
        raw=account_settings,
        settings=parse_connection_settings(
            account_id, merged, allowed_custom_endpoints=tuple(allowed_custom_endpoints)
        ),
        fingerprint=settings_fingerprint(merged),
        has_overrides=bool(overrides),
    )


def delivery_changed(old: ConnectionSettings, new: ConnectionSettings) -> bool:
    """Whether what Braze should hold for the connection's users may have changed."""
    return (
        old.parts != new.parts
        or old.api_key != new.api_key
        or old.operating_system != new.operating_system
        or old.email_identity_type != new.email_identity_type
        or old.update_existing_only != new.update_existing_only
    )
