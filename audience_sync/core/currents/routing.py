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

    The answer never contains the value. Refused: an empty value; anything but printable ASCII
    (a newline or control character would split or corrupt the header, and the HTTP client
    encodes Basic credentials as Latin-1, so other characters either fail at send time or reach
    mParticle as different bytes); a ':' in the key, which Basic auth reads as the end of the
    user id.
    """
    if not value:
        return "required (empty)"
    if any(not (" " <= c <= "~") for c in value):
        return "contains characters other than printable ASCII (a control character or newline?)"
    if field == "key" and ":" in value:
        return "must not contain ':' (Basic auth would read the rest as the secret)"
    return None
