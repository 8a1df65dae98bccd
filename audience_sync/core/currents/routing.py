"""Which mParticle input feed an event goes to (SPEC §6.3).

An event with an ``app_id`` listed in a feed's ``app_ids`` goes to that feed; else one with
``platform`` ios/android/web goes to the feed of that platform; else (email, SMS, webhook,
WhatsApp, conversions…) to the ``unbound`` feed. No matching feed → None: the event is held
(``no_feed``) until a feed exists, never dropped.

A feed's key and secret are sent as HTTP Basic auth (SPEC §6.4); :func:`credential_problem`
says at start-up which cannot be, so a bad feed never reaches the sender.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from audience_sync.core.connection import is_header_safe

ROUTED_PLATFORMS = frozenset({"ios", "android", "web"})
UNBOUND = "unbound"


@dataclass(frozen=True, kw_only=True)
class Feed:
    """A configured feed as routing sees it (no credentials)."""

    name: str
    platform: str
    app_ids: frozenset[str] = frozenset()


def route(app_id: str | None, platform: str | None, feeds: Sequence[Feed]) -> str | None:
    """The name of the feed for an event, or None when no configured feed takes it."""
    if app_id:
        for feed in feeds:
            if app_id in feed.app_ids:
                return feed.name
    wanted = platform.lower() if platform and platform.lower() in ROUTED_PLATFORMS else UNBOUND
    for feed in feeds:
        if feed.platform == wanted:
            return feed.name
    return None


CREDENTIAL_FIELDS = ("key", "secret")


def credential_problem(field: str, value: str) -> str | None:
    """Why a feed's ``key`` or ``secret`` cannot go into an HTTP Basic auth header, else None.

    The answer never contains the value. Refused: an empty value; what the HTTP client cannot
    encode or a header should never carry (the rule of every header the engine sends,
    :func:`~audience_sync.core.connection.is_header_safe`: a newline from a secrets file, a
    control character); a ':' in the key, which Basic auth reads as the end of the user id.
    """
    if not value:
        return "required (empty)"
    if not is_header_safe(value):
        return "must be Latin-1 text without control characters (a newline?)"
    if field == "key" and ":" in value:
        return "must not contain ':' (Basic auth would read the rest as the secret)"
    return None
