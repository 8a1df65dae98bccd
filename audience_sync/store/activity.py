"""What the engine is doing, for the operator's views: the backlog now, counts over every
table, and the counters over time (SPEC §8). Plain values out of the tables; nothing written.

The entities an operator inspects (connections, audiences, users, deliveries, data points,
feeds, jobs) are in :mod:`audience_sync.store.reads`; the admin reads through these two only.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from audience_sync.core.states import (
    AudienceState,
    DeliveryCounter,
    DeliveryReason,
    IntakeCounter,
    OutboxState,
    WorkspaceState,
)
from audience_sync.store import journal
from audience_sync.store.engine import read_only
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.schema import (
    audiences,
    braze_users,
    connections,
    counters,
    memberships,
    outbox,
    users,
    workspaces,
)

# Counter reasons that are not failures (everything else counted is a drop, refusal or guard).
NOT_FAILURES = frozenset(
    {
        DeliveryCounter.ACCEPTED,
        DeliveryCounter.UNCHANGED,
        DeliveryCounter.DATAPOINTS,
        DeliveryCounter.DATAPOINTS_FULL,
        DeliveryReason.RATE_LIMITED,
        DeliveryReason.SHUTDOWN,
        IntakeCounter.MEMBERSHIPS_APPLIED,
        IntakeCounter.DUPLICATE_MESSAGE,
        IntakeCounter.AUDIENCE_REMOVED,
    }
)
NOT_FAILURE_PREFIXES = ("subscription_",)


def is_failure(reason: str) -> bool:
    """Whether a counter reason is something that went wrong (a drop, a refusal, a guard)."""
    return reason not in NOT_FAILURES and not reason.startswith(NOT_FAILURE_PREFIXES)


DATAPOINTS = DeliveryCounter.DATAPOINTS
DATAPOINTS_FULL = DeliveryCounter.DATAPOINTS_FULL
"""Counter reason: the data points a resend-everything output would have spent for the same
writes (the whole attribute object of every user written or found unchanged)."""


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Backlog:
    """The outbox now: users waiting for Braze, and those given up on; and the Firehose
    messages accepted but not yet applied to the membership state (the journal)."""

    pending: int
    dead: int
    in_flight: int
    oldest_pending_at: float | None
    firehose_waiting: int = 0
    firehose_oldest_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Status:
    """The one-screen summary of the engine."""

    connections: Mapping[str, int]
    audiences: int
    users: int
    memberships: int
    workspaces_suspended: int
    backlog: Backlog
    failures_today: Mapping[str, int]
    datapoints_today: int
    datapoints_full_today: int


def _journal_backlog(conn: sa.Connection) -> journal.JournalBacklog:
    """The journal's backlog, read from its own file when it has one (store/journal_file)."""
    entries_engine = journal_engine(conn.engine)
    if entries_engine is conn.engine:
        return journal.backlog(conn)
    with read_only(entries_engine) as journal_conn:
        return journal.backlog(journal_conn)


def backlog(conn: sa.Connection, *, now: float) -> Backlog:
    """Pending, dead and leased users, and when the oldest pending one was enqueued."""
    rows = conn.execute(
        sa.select(
            outbox.c.state,
            sa.func.count(),
            sa.func.min(outbox.c.enqueued_at),
            sa.func.sum(sa.case((outbox.c.claimed_until > now, 1), else_=0)),
        ).group_by(outbox.c.state)
    ).all()
    by_state = {r[0]: r for r in rows}
    pending = by_state.get(OutboxState.PENDING)
    dead = by_state.get(OutboxState.DEAD)
    waiting = _journal_backlog(conn)
    return Backlog(
        firehose_waiting=waiting.entries,
        firehose_oldest_at=waiting.oldest_received_at,
        pending=int(pending[1]) if pending else 0,
        dead=int(dead[1]) if dead else 0,
        in_flight=int(pending[3] or 0) if pending else 0,
        oldest_pending_at=float(pending[2]) if pending and pending[2] is not None else None,
    )


def status(conn: sa.Connection, *, now: float) -> Status:
    """Counts over every table an operator cares about, in a handful of aggregate queries."""
    by_state = dict(
        conn.execute(sa.select(connections.c.state, sa.func.count()).group_by(connections.c.state))
        .tuples()
        .all()
    )
    active_audiences = conn.execute(
        sa.select(sa.func.count())
        .select_from(audiences)
        .where(audiences.c.state == AudienceState.ACTIVE)
    ).scalar_one()
    user_count = conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one()
    member_count = conn.execute(
        sa.select(sa.func.count()).select_from(memberships).where(memberships.c.is_member)
    ).scalar_one()
    suspended = conn.execute(
        sa.select(sa.func.count())
        .select_from(workspaces)
        .where(workspaces.c.state != WorkspaceState.ACTIVE)
    ).scalar_one()
    today = _day(now)
    reasons = _reasons(conn, day_from=today, day_to=today)
    return Status(
        connections={str(k): int(v) for k, v in by_state.items()},
        audiences=int(active_audiences),
        users=int(user_count),
        memberships=int(member_count),
        workspaces_suspended=int(suspended),
        backlog=backlog(conn, now=now),
        failures_today={r: n for r, n in reasons.items() if is_failure(r)},
        datapoints_today=reasons.get(DATAPOINTS, 0),
        datapoints_full_today=reasons.get(DATAPOINTS_FULL, 0),
    )


@dataclass(frozen=True, kw_only=True)
class Gauges:
    """The few values ``/metrics`` reads at every scrape: aggregates over small or indexed data."""

    backlog: Backlog
    workspaces_suspended: int
    connections: Mapping[str, int]


def gauges(conn: sa.Connection, *, now: float) -> Gauges:
    """Backlog, suspended workspaces and connections by state (no scan of users)."""
    by_state = dict(
        conn.execute(sa.select(connections.c.state, sa.func.count()).group_by(connections.c.state))
        .tuples()
        .all()
    )
    suspended = conn.execute(
        sa.select(sa.func.count())
        .select_from(workspaces)
        .where(workspaces.c.state != WorkspaceState.ACTIVE)
    ).scalar_one()
    return Gauges(
        backlog=backlog(conn, now=now),
        workspaces_suspended=int(suspended),
        connections={str(k): int(v) for k, v in by_state.items()},
    )


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m-%d")


def _reasons(conn: sa.Connection, *, day_from: str, day_to: str) -> dict[str, int]:
    rows = conn.execute(
        sa.select(counters.c.reason, sa.func.sum(counters.c["count"]))
        .where(counters.c.day >= day_from, counters.c.day <= day_to)
        .group_by(counters.c.reason)
    )
    return {r: int(n) for r, n in rows}


# -- time series for the dashboard -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DaySeries:
    """Per-day totals of the counters the dashboard charts, oldest day first."""

    days: Sequence[str]
    accepted: Sequence[int]
    memberships: Sequence[int]
    datapoints: Sequence[int]
    datapoints_full: Sequence[int]
    failures: Mapping[str, int] = field(default_factory=dict)


def day_series(conn: sa.Connection, *, now: float, days: int = 14) -> DaySeries:
    """The last ``days`` UTC days of delivery, intake, data points; failures summed by reason."""
    end = datetime.fromtimestamp(now, tz=UTC)
    labels = [(end - timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days - 1, -1, -1)]
    rows = conn.execute(
        sa.select(counters.c.day, counters.c.reason, sa.func.sum(counters.c["count"]))
        .where(counters.c.day >= labels[0])
        .group_by(counters.c.day, counters.c.reason)
    ).all()
    table: dict[str, dict[str, int]] = {}
    failures: dict[str, int] = {}
    for day, reason, n in rows:
        table.setdefault(reason, {})[day] = int(n)
        if is_failure(reason):
            failures[reason] = failures.get(reason, 0) + int(n)

    def series(reason: str) -> list[int]:
        return [table.get(reason, {}).get(d, 0) for d in labels]

    return DaySeries(
        days=labels,
        accepted=series("accepted"),
        memberships=series("memberships_applied"),
        datapoints=series(DATAPOINTS),
        datapoints_full=series(DATAPOINTS_FULL),
        failures=dict(sorted(failures.items(), key=lambda kv: -kv[1])),
    )


@dataclass(frozen=True, kw_only=True)
class MinuteSeries:
    """Per-minute counts over the last hour, oldest minute first (``starts`` in epoch s)."""

    starts: Sequence[float]
    written: Sequence[int]
    backlog_enqueued: Sequence[int]
    backlog_older: int


def minute_series(conn: sa.Connection, *, now: float, minutes: int = 60) -> MinuteSeries:
    """Users last written to Braze per minute, and the pending backlog by the minute it entered.

    Both read current rows (``braze_users.last_write_at``, ``outbox.enqueued_at``): a user
    written twice in the hour counts once, at its latest write; this is a view of now, not a
    history store.
    """
    first = (int(now) // 60 - minutes + 1) * 60
    bucket_w = _minute(conn, braze_users.c.last_write_at, first)
    written = dict(
        conn.execute(
            sa.select(bucket_w, sa.func.count())
            .where(braze_users.c.last_write_at >= first)
            .group_by(bucket_w)
        )
        .tuples()
        .all()
    )
    bucket_b = _minute(conn, outbox.c.enqueued_at, first)
    pending = dict(
        conn.execute(
            sa.select(bucket_b, sa.func.count())
            .where(outbox.c.state == OutboxState.PENDING, outbox.c.enqueued_at >= first)
            .group_by(bucket_b)
        )
        .tuples()
        .all()
    )
    older = conn.execute(
        sa.select(sa.func.count())
        .select_from(outbox)
        .where(outbox.c.state == OutboxState.PENDING, outbox.c.enqueued_at < first)
    ).scalar_one()
    return MinuteSeries(
        starts=[first + 60 * i for i in range(minutes)],
        written=[int(written.get(i, 0)) for i in range(minutes)],
        backlog_enqueued=[int(pending.get(i, 0)) for i in range(minutes)],
        backlog_older=int(older),
    )


def _minute(conn: sa.Connection, column: t.Any, first: int) -> t.Any:
    """Whole minutes since ``first``: PostgreSQL's integer cast rounds, SQLite's truncates."""
    minutes = (column - first) / 60
    if conn.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(minutes), sa.Integer)
    return sa.cast(minutes, sa.Integer)
