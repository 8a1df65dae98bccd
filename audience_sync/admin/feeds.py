"""The configured Currents feeds as the admin shows them: name and platform, never credentials."""

from __future__ import annotations

from audience_sync.settings import Settings


def feed_platforms(settings: Settings) -> dict[str, str]:
    """Each configured feed's platform, by feed name."""
    return {feed.name: feed.platform for feed in settings.feeds}
