"""What the scheduler, ``audience-sync status`` and the admin API call on the Currents queue:
``currents_expire`` (SPEC §7), dedup-key pruning (``prune``), replay, and the feed read."""

from __future__ import annotations

import logging
import time
import typing as t
from dataclasses import asdict

import sqlalchemy as sa

from audience_sync.currents.importer import currents_watch
from audience_sync.settings import Settings
from audience_sync.store import currents as queue
from audience_sync.store.engine import read_only
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)

__all__ = [
    "currents_expire",
    "currents_feeds",
    "currents_replay",
    "currents_watch",
    "prune_currents_dedup",
]


def currents_expire(engine: sa.Engine, settings: Settings, *, now: float | None = None) -> int:
    """Move events past ``currents.retention_s`` to the dead-letter store; returns how many."""
    now = time.time() if now is None else now
    moved = in_transaction(
        engine,
        lambda conn: queue.expire(conn, now=now, retention_s=settings.get("currents.retention_s")),
        action="currents_expire",
    )
    if moved:
        logger.warning(
            "%d currents event(s) dead-lettered past retention",
            moved,
            extra={"action": "currents_expired", "count": moved},
        )
    return moved


def prune_currents_dedup(engine: sa.Engine, settings: Settings, *, now: float | None = None) -> int:
    """Delete dedup keys older than ``currents.dedup_window_s``; returns how many."""
    now = time.time() if now is None else now
    return in_transaction(
        engine,
        lambda conn: queue.prune_dedup(
            conn, now=now, window_s=settings.get("currents.dedup_window_s")
        ),
        action="currents_prune",
    )


def currents_replay(engine: sa.Engine, *, feed: str | None, now: float | None = None) -> int:
    """Re-queue dead-lettered Currents events (of one feed, or all); returns how many."""
    now = time.time() if now is None else now
    return in_transaction(
        engine, lambda conn: queue.replay(conn, feed=feed, now=now), action="currents_replay"
    )


def currents_feeds(
    engine: sa.Engine, settings: Settings, *, now: float | None = None
) -> list[dict[str, t.Any]]:
    """Feed states, backlog and oldest event age (seconds), for status and the admin API.
    No credentials."""
    now = time.time() if now is None else now
    with read_only(engine) as conn:
        rows = queue.feed_status(conn, [f.name for f in settings.feeds])
    platforms = {f.name: f.platform for f in settings.feeds}
    out = []
    for row in rows:
        item = asdict(row)
        item["platform"] = platforms.get(row.name)
        item["configured"] = row.name in platforms
        oldest = item.pop("oldest_received_at")
        item["oldest_age_s"] = None if oldest is None else round(max(0.0, now - oldest), 3)
        out.append(item)
    return out
