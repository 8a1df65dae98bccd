"""What status and the admin API read of the Currents queue (no payloads, no secrets)."""

from __future__ import annotations

import json
import typing as t
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.store.currents.base import (
    BatchState,
    EventState,
    FeedState,
)
from audience_sync.store.schema import (
    currents_batches,
    currents_events,
    currents_feeds,
)


@dataclass(frozen=True, kw_only=True)
class FeedStatus:
    """What ``audience-sync status`` and the admin API show of one feed."""

    name: str
    state: str
    reason: str | None
    paused_at: float | None
    next_probe_at: float | None
    backlog: int
    pending_batches: int
    dead_events: int
    oldest_received_at: float | None


def feed_status(conn: sa.Connection, feed_names: Sequence[str]) -> list[FeedStatus]:
    """Per feed (configured ones plus any with events): state, backlog, dead, oldest arrival.
    Events held for want of a feed are reported under the name ``(no feed)``."""
    e = currents_events.c
    stats: dict[str | None, dict[str, t.Any]] = {}
    rows = conn.execute(
        sa.select(
            e.feed,
            sa.func.sum(sa.case((e.state != EventState.DEAD, 1), else_=0)),
            sa.func.sum(sa.case((e.state == EventState.DEAD, 1), else_=0)),
            sa.func.min(sa.case((e.state != EventState.DEAD, e.received_at), else_=None)),
        ).group_by(e.feed)
    )
    for feed, live, dead, oldest in rows:
        stats[feed] = {"backlog": int(live or 0), "dead": int(dead or 0), "oldest": oldest}
    b = currents_batches.c
    pending: dict[str, int] = {}
    batch_rows = conn.execute(
        sa.select(
            b.feed,
            b.state,
            sa.func.count(),
            sa.func.sum(b.events),
            sa.func.min(b.received_at),
        ).group_by(b.feed, b.state)
    )
    for feed, state, batches, events, oldest in batch_rows:
        s = stats.setdefault(feed, {"backlog": 0, "dead": 0, "oldest": None})
        if state == BatchState.PENDING:
            pending[feed] = int(batches)
            s["backlog"] += int(events or 0)
            if oldest is not None and (s["oldest"] is None or oldest < s["oldest"]):
                s["oldest"] = oldest
        else:
            s["dead"] += int(events or 0)
    feeds = {r.name: r for r in conn.execute(sa.select(currents_feeds))}
    names = list(dict.fromkeys([*feed_names, *feeds, *(k for k in stats if k is not None)]))
    out = []
    for name in names:
        row = feeds.get(name)
        s = stats.get(name, {})
        out.append(
            FeedStatus(
                name=name,
                state=row.state if row else FeedState.ACTIVE,
                reason=row.reason if row else None,
                paused_at=row.paused_at if row else None,
                next_probe_at=row.next_probe_at if row else None,
                backlog=s.get("backlog", 0),
                pending_batches=int(pending.get(name, 0)),
                dead_events=s.get("dead", 0),
                oldest_received_at=s.get("oldest"),
            )
        )
    if None in stats:
        s = stats[None]
        out.append(
            FeedStatus(
                name="(no feed)",
                state="held",
                reason="no_feed",
                paused_at=None,
                next_probe_at=None,
                backlog=s["backlog"],
                pending_batches=0,
                dead_events=s["dead"],
                oldest_received_at=s["oldest"],
            )
        )
    return out


def dead_letters(
    conn: sa.Connection, *, feed: str | None = None, limit: int | None = 100
) -> list[dict[str, t.Any]]:
    """Dead-lettered events with their reasons (ids only, no payloads), oldest first."""
    e = currents_events.c
    b = currents_batches.c
    events = sa.select(e.event_id, e.feed, e.external_user_id, e.reason, e.received_at).where(
        e.state == EventState.DEAD
    )
    batches = sa.select(
        b.event_ids, b.feed, b.external_user_id, b.last_reason, b.received_at
    ).where(b.state == BatchState.DEAD)
    if feed is not None:
        events = events.where(e.feed == feed)
        batches = batches.where(b.feed == feed)
    out = [dict(r._mapping) for r in conn.execute(events)]
    for row in conn.execute(batches):
        out.extend(
            {
                "event_id": event_id,
                "feed": row.feed,
                "external_user_id": row.external_user_id,
                "reason": row.last_reason,
                "received_at": row.received_at,
            }
            for event_id in json.loads(row.event_ids)
        )
    out.sort(key=lambda d: d["received_at"])
    return out if limit is None else out[:limit]
