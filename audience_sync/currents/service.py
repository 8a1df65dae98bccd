"""The Currents intake service: normalised events → mapped, deduplicated, routed and cut into
mParticle batches in one transaction (durable before any reply), every skipped event counted by
reason.

Shared by ``POST /currents`` and the file importer; :class:`CurrentsConfig` is what both need
from the settings (the mapping table with its override, the feeds as routing sees them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import sqlalchemy as sa

from audience_sync.core.currents.batching import OpenBatch, QueuedEvent, plan_batches
from audience_sync.core.currents.events import CurrentsEvent
from audience_sync.core.currents.mapping import MappedEvent, Skip, map_event
from audience_sync.core.currents.routing import Feed, route
from audience_sync.core.currents.table import MappingTable, default_table, override_table
from audience_sync.core.currents.validation import mapped_problems
from audience_sync.settings import FeedSettings, Settings
from audience_sync.store import currents as queue

logger = logging.getLogger(__name__)

NO_FEED = "no_feed"


@dataclass(frozen=True, kw_only=True)
class CurrentsConfig:
    """The Currents settings the intake works with."""

    table: MappingTable
    feeds: tuple[Feed, ...]
    identity_key: str = "customerid"
    dedup_window_s: float = 259200.0
    environment: str = "production"
    coalesce_s: float = 0.5
    """A batch formed at intake waits this long (for later events of its user) before it is
    sent (``delivery.coalesce_s``)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> CurrentsConfig:
        """Build from settings; ``currents.mapping_path`` entries override the bundled table."""
        table = default_table()
        path = settings.get("currents.mapping_path")
        if path:
            table = override_table(table, json.loads(Path(path).read_text("utf-8")))
        return cls(
            table=table,
            feeds=routing_feeds(settings.feeds),
            identity_key=settings.get("currents.identity_key"),
            dedup_window_s=settings.get("currents.dedup_window_s"),
            environment=settings.get("currents.environment"),
            coalesce_s=settings.get("delivery.coalesce_s"),
        )

    def route(self, app_id: str | None, platform: str | None) -> str | None:
        """The feed of an event (None: held)."""
        return route(app_id, platform, self.feeds)


def routing_feeds(feeds: Sequence[FeedSettings]) -> tuple[Feed, ...]:
    """Configured feeds as routing sees them (no credentials), in name order."""
    return tuple(
        Feed(name=f.name, platform=f.platform, app_ids=frozenset(f.app_ids))
        for f in sorted(feeds, key=lambda f: f.name)
    )


@dataclass(frozen=True, kw_only=True)
class IntakeResult:
    """What happened to the events of one request or file."""

    received: int
    queued: int
    held: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def forwarded(self) -> int:
        """Events queued for a feed (held ones are reported apart, as ``no_feed``)."""
        return self.queued

    def not_forwarded(self) -> dict[str, int]:
        """Events not queued for a feed, by reason; ``no_feed`` ones are held, not dropped."""
        return {**self.skipped, **({NO_FEED: self.held} if self.held else {})}


def prepare(
    events: Sequence[CurrentsEvent], config: CurrentsConfig
) -> tuple[list[queue.NewEvent], Counter[str]]:
    """Map, validate and route (pure work, before the transaction)."""
    skipped: Counter[str] = Counter()
    ready: list[queue.NewEvent] = []
    table, identity_key, route = config.table, config.identity_key, config.route
    dumps = orjson.dumps
    feeds: dict[tuple[str | None, str | None], str | None] = {}  # routed once per pair
    for event in events:
        mapped = map_event(event, table, identity_key=identity_key)
        if isinstance(mapped, Skip):
            skipped[mapped] += 1
            continue
        if not _is_valid(mapped, identity_key):
            skipped[Skip.INVALID_EVENT] += 1
            continue
        where = (mapped.app_id, mapped.platform)
        feed = feeds[where] if where in feeds else feeds.setdefault(where, route(*where))
        ready.append(
            queue.NewEvent(
                event_id=mapped.event_id,
                feed=feed,
                external_user_id=mapped.external_user_id,
                app_id=mapped.app_id,
                platform=mapped.platform,
                envelope_json=dumps(mapped.envelope).decode(),
                event_json=dumps(mapped.event).decode(),
            )
        )
    return ready, skipped


def _is_valid(mapped: MappedEvent, identity_key: str) -> bool:
    problems = mapped_problems(mapped, identity_key=identity_key)
    if problems:
        logger.info(
            "currents event fails mParticle's rules",
            extra={"action": "currents_invalid_event", "problems": problems[:5]},
        )
    return not problems


def store_events(
    conn: sa.Connection,
    ready: Sequence[queue.NewEvent],
    skipped: Counter[str],
    *,
    received: int,
    config: CurrentsConfig,
    now: float,
) -> IntakeResult:
    """Deduplicate prepared events and form their batches in the caller's transaction (events
    without a feed are held); count everything."""
    fresh = queue.claim_new_ids(
        conn, [e.event_id for e in ready], now=now, window_s=config.dedup_window_s
    )
    keep: list[queue.NewEvent] = []
    for event in ready:
        if event.event_id in fresh:
            fresh.discard(event.event_id)  # a second copy in the same request is a duplicate
            keep.append(event)
        else:
            skipped[Skip.DUPLICATE] += 1
    held = [e for e in keep if e.feed is None]
    form_batches(conn, [e for e in keep if e.feed is not None], config=config, now=now)
    queue.enqueue(conn, held, now=now)
    counts = {"received": received, "queued": len(keep) - len(held), NO_FEED: len(held), **skipped}
    queue.count(conn, counts, now=now)
    return IntakeResult(
        received=received, queued=len(keep) - len(held), held=len(held), skipped=dict(skipped)
    )


def form_batches(
    conn: sa.Connection, events: Sequence[queue.NewEvent], *, config: CurrentsConfig, now: float
) -> int:
    """Cut new events (each with a feed) into batches at once, joining their users' open
    batches, in the caller's transaction; events that can never be sent are dead-lettered
    with the reason. Returns the number dead-lettered.

    Their queue positions are taken from the events' sequence, on PostgreSQL under each
    feed's planning lock (taken in name order), so that batches commit in the order of their
    positions and no sender can lease a user's later batch before an earlier one exists.
    """
    if not events:
        return 0
    by_feed: dict[str, set[str]] = {}
    for e in events:
        by_feed.setdefault(e.feed, set()).add(e.external_user_id)  # type: ignore[arg-type]
    for feed in sorted(by_feed):
        queue.lock_feed_for_planning(conn, feed)
    seqs = queue.reserve_seqs(conn, len(events))
    opened: dict[tuple[str, str], OpenBatch] = {}
    for feed, users in by_feed.items():
        opened.update(queue.open_batches(conn, feed, users))
    plan = plan_batches(
        [
            QueuedEvent(
                seq=seq,
                event_id=e.event_id,
                feed=e.feed,  # type: ignore[arg-type]
                external_user_id=e.external_user_id,
                received_at=now,
                envelope_json=e.envelope_json,
                event_json=e.event_json,
            )
            for seq, e in zip(seqs, events, strict=True)
        ],
        environment=config.environment,
        open_batches=opened,
    )
    queue.store_batches(conn, plan.batches, now=now, due_at=now + config.coalesce_s)
    if plan.rejected:
        position = dict(zip(seqs, events, strict=True))
        reasons = {position[seq].event_id: reason for seq, reason in plan.rejected}
        queue.enqueue(conn, [e for e in events if e.event_id in reasons], now=now, dead=reasons)
        queue.count(conn, {"dead_letter": len(reasons)}, now=now)
    return len(plan.rejected)


def file_checksum(data: bytes) -> str:
    """sha256 of a file's content (with its path, the once-only key of an import)."""
    return hashlib.sha256(data).hexdigest()
