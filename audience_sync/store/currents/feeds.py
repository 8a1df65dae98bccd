"""Feed state (SPEC §6.5): active or paused, probes, settings fingerprints."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from audience_sync.store.currents.base import (
    FeedState,
)
from audience_sync.store.schema import (
    currents_feeds,
)
from audience_sync.store.statements import insert


def sync_feeds(
    conn: sa.Connection, fingerprints: Mapping[str, str], *, now: float
) -> dict[str, str]:
    """Make a row for every configured feed; a paused feed whose settings changed is probed at
    once (SPEC §6.5). Returns each feed's state."""
    f = currents_feeds.c
    existing = {r.name: r for r in conn.execute(sa.select(currents_feeds))}
    states: dict[str, str] = {}
    for name, fp in fingerprints.items():
        row = existing.get(name)
        if row is None:
            conn.execute(
                insert(conn, currents_feeds)
                .on_conflict_do_nothing(index_elements=[f.name])
                .values(name=name, state=FeedState.ACTIVE, settings_fingerprint=fp, updated_at=now)
            )
            states[name] = FeedState.ACTIVE
            continue
        if row.settings_fingerprint != fp:
            conn.execute(
                sa.update(currents_feeds)
                .where(f.name == name)
                .values(settings_fingerprint=fp, next_probe_at=now, updated_at=now)
            )
        states[name] = row.state
    return states


def pause_feed(
    conn: sa.Connection, name: str, *, reason: str, now: float, probe_interval_s: float
) -> None:
    """Credentials refused: pause the feed; its events stay queued and it is probed later."""
    f = currents_feeds.c
    conn.execute(
        sa.update(currents_feeds)
        .where(f.name == name)
        .values(
            state=FeedState.PAUSED,
            reason=reason,
            paused_at=sa.func.coalesce(f.paused_at, now),
            next_probe_at=now + probe_interval_s,
            updated_at=now,
        )
    )


def resume_feed(conn: sa.Connection, name: str, *, now: float) -> None:
    """A probe succeeded: the feed sends again."""
    conn.execute(
        sa.update(currents_feeds)
        .where(currents_feeds.c.name == name)
        .values(
            state=FeedState.ACTIVE, reason=None, paused_at=None, next_probe_at=None, updated_at=now
        )
    )


def claim_probe_turn(conn: sa.Connection, *, now: float, probe_interval_s: float) -> list[str]:
    """Paused feeds whose probe is due; each is pushed ``probe_interval_s`` ahead so that only
    one sender probes it."""
    f = currents_feeds.c
    due = list(
        conn.execute(
            sa.select(f.name).where(
                f.state == FeedState.PAUSED,
                sa.or_(f.next_probe_at.is_(None), f.next_probe_at <= now),
            )
        ).scalars()
    )
    for name in due:
        conn.execute(
            sa.update(currents_feeds)
            .where(f.name == name)
            .values(next_probe_at=now + probe_interval_s)
        )
    return due


def feed_states(conn: sa.Connection) -> dict[str, str]:
    """Every known feed's state."""
    query = sa.select(currents_feeds.c.name, currents_feeds.c.state)
    return {r.name: r.state for r in conn.execute(query)}
