"""Which mParticle input feed an event goes to (SPEC §6.3).

An event with an ``app_id`` listed in a feed's ``app_ids`` goes to that feed; else one with
``platform`` ios/android/web goes to the feed of that platform; else (email, SMS, webhook,
WhatsApp, conversions…) to the ``unbound`` feed. No matching feed → None: the event is held
(``no_feed``) until a feed exists, never dropped.
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
