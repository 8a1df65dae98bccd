"""Read models of what an operator inspects: connections, audiences, one user, deliveries,
data points, Currents feeds, job runs (admin API, dashboard, ``status``).

Every function takes a connection and returns plain frozen values; none writes. The admin room
reads the database only through this module and :mod:`audience_sync.store.activity` (the
backlog, counts and counters over time), so a schema change touches one reader. Secrets
never leave here: a connection's account settings come out masked (:func:`mask_settings`).

Lists are keyset-paginated: each takes ``after`` (the key of the last row already seen, or
``None``) and ``limit``, and returns up to ``limit`` rows in key order; the caller turns the
last key into an opaque cursor.

Why one module past ~400 lines: each read model is a short query plus its value type, and
the admin depends on this one contract; splitting it by entity is the next step if it grows.

Currents feeds (:func:`feed_states`) come from the Currents queue's own read, job runs
(:func:`job_runs`) from the scheduler's run log; their value types below are the contract the
admin renders.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from audience_sync.core.state import Snapshot
from audience_sync.core.states import AudienceState
from audience_sync.store.currents.reads import feed_status
from audience_sync.store.schema import (
    audiences,
    braze_users,
    connections,
    datapoints,
    memberships,
    outbox,
    users,
    workspaces,
)
from audience_sync.store.schema import (
    job_runs as job_runs_table,
)
from audience_sync.store.snapshot import load_snapshot

MASK = "***"
_SECRET_NAME = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


def mask_settings(raw: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Account settings with every secret replaced by ``***``: any setting whose name says
    key, secret, token, password or credential (``restApiKey`` today, whatever mParticle adds
    tomorrow). Masking by name errs on the side of hiding."""
    return {k: (MASK if v and _SECRET_NAME.search(k) else v) for k, v in raw.items()}


# -- connections -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ConnectionView:
    """One mParticle configuration as an operator sees it: settings masked."""

    account_id: int
    state: str
    settings: Mapping[str, t.Any]
    settings_errors: Sequence[str]
    workspace_id: int | None
    workspace_state: str | None
    workspace_state_reason: str | None
    audiences: int
    users: int
    members: int
    created_at: float
    updated_at: float


def _connection_query() -> sa.Select[t.Any]:
    audience_count = (
        sa.select(sa.func.count())
        .where(
            audiences.c.account_id == connections.c.account_id,
            audiences.c.state == AudienceState.ACTIVE,
        )
        .scalar_subquery()
    )
    user_count = (
        sa.select(sa.func.count())
        .where(users.c.account_id == connections.c.account_id)
        .scalar_subquery()
    )
    member_count = (
        sa.select(sa.func.count())
        .where(memberships.c.account_id == connections.c.account_id, memberships.c.is_member)
        .scalar_subquery()
    )
    return sa.select(
        connections.c.account_id,
        connections.c.state,
        connections.c.account_settings,
        connections.c.settings_errors,
        connections.c.workspace_id,
        workspaces.c.state.label("workspace_state"),
        workspaces.c.state_reason,
        audience_count.label("audiences"),
        user_count.label("users"),
        member_count.label("members"),
        connections.c.created_at,
        connections.c.updated_at,
    ).select_from(connections.outerjoin(workspaces, workspaces.c.id == connections.c.workspace_id))


def _connection_view(row: t.Any) -> ConnectionView:
    return ConnectionView(
        account_id=int(row.account_id),
        state=row.state,
        settings=mask_settings(row.account_settings or {}),
        settings_errors=tuple(row.settings_errors or ()),
        workspace_id=row.workspace_id,
        workspace_state=row.workspace_state,
        workspace_state_reason=row.state_reason,
        audiences=int(row.audiences),
        users=int(row.users),
        members=int(row.members),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
    )


def list_connections(
    conn: sa.Connection, *, after: int | None = None, limit: int = 100
) -> list[ConnectionView]:
    """Connections in ``account_id`` order."""
    query = _connection_query().order_by(connections.c.account_id).limit(limit)
    if after is not None:
        query = query.where(connections.c.account_id > after)
    return [_connection_view(r) for r in conn.execute(query)]


def get_connection(conn: sa.Connection, account_id: int) -> ConnectionView | None:
    """One connection, or ``None``."""
    row = conn.execute(
        _connection_query().where(connections.c.account_id == account_id)
    ).one_or_none()
    return _connection_view(row) if row is not None else None


# -- audiences ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AudienceView:
    """One audience of a connection with its member count and last membership change."""

    account_id: int
    audience_id: int
    name: str
    state: str
    cleanup: bool
    members: int
    last_change_at: float | None
    created_at: float
    removed_at: float | None
    datapoints: int
    drift: int | None = None
    """Users whose Braze attributes differed from the acknowledged state at the last audit;
    ``None`` until an audit has run (the audit job records it)."""


def list_audiences(
    conn: sa.Connection, account_id: int, *, after: int | None = None, limit: int = 100
) -> list[AudienceView]:
    """A connection's audiences in ``audience_id`` order (removed ones too, with their state)."""
    member_stats = (
        sa.select(
            memberships.c.audience_id,
            sa.func.sum(sa.case((memberships.c.is_member, 1), else_=0)).label("members"),
            sa.func.max(memberships.c.changed_at).label("last_change_at"),
        )
        .where(memberships.c.account_id == account_id)
        .group_by(memberships.c.audience_id)
        .subquery()
    )
    points = (
        sa.select(datapoints.c.audience_id, sa.func.sum(datapoints.c.points).label("points"))
        .where(datapoints.c.account_id == account_id)
        .group_by(datapoints.c.audience_id)
        .subquery()
    )
    query = (
        sa.select(
            audiences,
            member_stats.c.members,
            member_stats.c.last_change_at,
            points.c.points,
        )
        .select_from(
            audiences.outerjoin(
                member_stats, member_stats.c.audience_id == audiences.c.audience_id
            ).outerjoin(points, points.c.audience_id == audiences.c.audience_id)
        )
        .where(audiences.c.account_id == account_id)
        .order_by(audiences.c.audience_id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(audiences.c.audience_id > after)
    drift = last_audit_drift(conn, account_id)
    return [
        AudienceView(
            account_id=int(r.account_id),
            audience_id=int(r.audience_id),
            name=r.name,
            state=r.state,
            cleanup=bool(r.cleanup),
            members=int(r.members or 0),
            last_change_at=float(r.last_change_at) if r.last_change_at is not None else None,
            created_at=float(r.created_at),
            removed_at=r.removed_at,
            datapoints=int(r.points or 0),
            drift=None if drift is None else drift.get(int(r.audience_id), 0),
        )
        for r in conn.execute(query)
    ]


AUDIT_JOB = "audit_braze"


def last_audit_drift(conn: sa.Connection, account_id: int) -> dict[int, int] | None:
    """Users drifted per audience of one connection at the last finished audit (scheduled or
    ``reconcile``), from that run's details; None when no audit has finished yet."""
    details = conn.execute(
        sa.select(job_runs_table.c.details)
        .where(job_runs_table.c.job == AUDIT_JOB, job_runs_table.c.outcome == "ok")
        .order_by(job_runs_table.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if details is None and not conn.execute(
        sa.select(job_runs_table.c.id)
        .where(job_runs_table.c.job == AUDIT_JOB, job_runs_table.c.outcome == "ok")
        .limit(1)
    ).first():
        return None
    drift: dict[int, int] = {}
    for entry in (details or {}).get("drift", []):
        if entry.get("account_id") == account_id and entry.get("audience_id") is not None:
            audience = int(entry["audience_id"])
            drift[audience] = drift.get(audience, 0) + int(entry.get("users", 0))
    return drift


# -- one user ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class UserRecord:
    """What the tables hold about one user of one connection (desired rows, not yet merged)."""

    account_id: int
    external_id: str
    workspace_id: int | None
    audiences: Sequence[tuple[int, str, bool]]
    acknowledged: Mapping[str, t.Any]
    flags: Sequence[str]
    last_write_at: float | None
    last_outcome: str | None
    last_outcome_at: float | None
    outbox_state: str | None
    outbox_attempts: int
    outbox_reason: str | None
    outbox_due_at: float | None


def user_record(conn: sa.Connection, account_id: int, external_id: str) -> UserRecord | None:
    """The user's memberships, acknowledged attributes and outbox row; ``None`` if unknown."""
    workspace_id = conn.execute(
        sa.select(connections.c.workspace_id).where(connections.c.account_id == account_id)
    ).scalar_one_or_none()
    known = conn.execute(
        sa.select(users.c.external_id).where(
            users.c.account_id == account_id, users.c.external_id == external_id
        )
    ).first()
    member_rows = conn.execute(
        sa.select(memberships.c.audience_id, audiences.c.name, memberships.c.is_member)
        .select_from(
            memberships.outerjoin(
                audiences,
                sa.and_(
                    audiences.c.account_id == memberships.c.account_id,
                    audiences.c.audience_id == memberships.c.audience_id,
                ),
            )
        )
        .where(memberships.c.account_id == account_id, memberships.c.external_id == external_id)
        .order_by(memberships.c.audience_id)
    ).all()
    if known is None and not member_rows:
        return None
    ack = out = None
    if workspace_id is not None:
        ack = conn.execute(
            sa.select(braze_users).where(
                braze_users.c.workspace_id == workspace_id,
                braze_users.c.external_id == external_id,
            )
        ).first()
        out = conn.execute(
            sa.select(outbox).where(
                outbox.c.workspace_id == workspace_id, outbox.c.external_id == external_id
            )
        ).first()
    return UserRecord(
        account_id=account_id,
        external_id=external_id,
        workspace_id=workspace_id,
        audiences=tuple(
            (int(a), n if n is not None else str(a), bool(m)) for a, n, m in member_rows
        ),
        acknowledged=dict(ack.attributes or {}) if ack is not None else {},
        flags=tuple(ack.flags or ()) if ack is not None else (),
        last_write_at=ack.last_write_at if ack is not None else None,
        last_outcome=ack.last_outcome if ack is not None else None,
        last_outcome_at=ack.last_outcome_at if ack is not None else None,
        outbox_state=out.state if out is not None else None,
        outbox_attempts=int(out.attempts) if out is not None else 0,
        outbox_reason=out.last_reason if out is not None else None,
        outbox_due_at=out.due_at if out is not None else None,
    )


def user_snapshot(conn: sa.Connection, workspace_id: int, external_id: str) -> Snapshot:
    """What the senders read for this Braze user: every connection's desired rows and the
    acknowledged attributes (the admin computes the pending write from it with the core)."""
    return load_snapshot(conn, workspace_id, [external_id], all_connections=True)


# -- deliveries --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DeliveryView:
    """One outbox row: a Braze user waiting for (or given up by) delivery."""

    workspace_id: int
    external_id: str
    state: str
    attempts: int
    last_reason: str | None
    due_at: float
    first_failure_at: float | None
    enqueued_at: float
    account_ids: Sequence[int] = ()


def list_deliveries(
    conn: sa.Connection,
    *,
    state: str | None = None,
    workspace_ids: Sequence[int] | None = None,
    after: tuple[int, str] | None = None,
    limit: int = 100,
) -> list[DeliveryView]:
    """Outbox rows in ``(workspace_id, external_id)`` order, optionally of one state."""
    query = sa.select(outbox).order_by(outbox.c.workspace_id, outbox.c.external_id).limit(limit)
    if state is not None:
        query = query.where(outbox.c.state == state)
    if workspace_ids is not None:
        query = query.where(outbox.c.workspace_id.in_(list(workspace_ids)))
    if after is not None:
        query = query.where(sa.tuple_(outbox.c.workspace_id, outbox.c.external_id) > after)
    rows = conn.execute(query).all()
    accounts: dict[int, list[int]] = {}
    for ws, account in conn.execute(
        sa.select(connections.c.workspace_id, connections.c.account_id).where(
            connections.c.workspace_id.in_(sorted({r.workspace_id for r in rows}))
        )
    ):
        accounts.setdefault(ws, []).append(int(account))
    return [
        DeliveryView(
            workspace_id=int(r.workspace_id),
            external_id=r.external_id,
            state=r.state,
            attempts=int(r.attempts),
            last_reason=r.last_reason,
            due_at=float(r.due_at),
            first_failure_at=r.first_failure_at,
            enqueued_at=float(r.enqueued_at),
            account_ids=tuple(sorted(accounts.get(r.workspace_id, ()))),
        )
        for r in rows
    ]


# -- data points -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DatapointsRow:
    """Data points spent on one day for one audience of one connection (0: not attributable)."""

    day: str
    account_id: int
    audience_id: int
    audience_name: str | None
    points: int


def list_datapoints(
    conn: sa.Connection,
    *,
    account_id: int | None = None,
    day_from: str | None = None,
    day_to: str | None = None,
    after: tuple[str, int, int] | None = None,
    limit: int = 100,
) -> list[DatapointsRow]:
    """Data points by ``(day, account_id, audience_id)``, newest day first."""
    summed = (
        sa.select(
            datapoints.c.day,
            datapoints.c.account_id,
            datapoints.c.audience_id,
            sa.func.sum(datapoints.c.points).label("points"),
        )
        .group_by(datapoints.c.day, datapoints.c.account_id, datapoints.c.audience_id)
        .subquery()
    )
    query = sa.select(summed, audiences.c.name).select_from(
        summed.outerjoin(
            audiences,
            sa.and_(
                audiences.c.account_id == summed.c.account_id,
                audiences.c.audience_id == summed.c.audience_id,
            ),
        )
    )
    if account_id is not None:
        query = query.where(summed.c.account_id == account_id)
    if day_from is not None:
        query = query.where(summed.c.day >= day_from)
    if day_to is not None:
        query = query.where(summed.c.day <= day_to)
    if after is not None:
        day, account, audience = after
        query = query.where(
            sa.or_(
                summed.c.day < day,
                sa.and_(
                    summed.c.day == day,
                    sa.tuple_(summed.c.account_id, summed.c.audience_id) > (account, audience),
                ),
            )
        )
    query = query.order_by(summed.c.day.desc(), summed.c.account_id, summed.c.audience_id)
    return [
        DatapointsRow(
            day=r.day,
            account_id=int(r.account_id),
            audience_id=int(r.audience_id),
            audience_name=r.name,
            points=int(r.points),
        )
        for r in conn.execute(query.limit(limit))
    ]


# -- Currents feeds and job runs (interfaces wired when their tables land) --------------------


@dataclass(frozen=True, kw_only=True)
class FeedState:
    """One mParticle input feed as the Currents sender sees it (never its key or secret)."""

    name: str
    platform: str
    state: str
    backlog: int
    oldest_event_at: float | None
    last_error: str | None = None


@dataclass(frozen=True, kw_only=True)
class JobRun:
    """One run of a scheduled job."""

    id: int
    job: str
    state: str
    started_at: float
    finished_at: float | None
    summary: Mapping[str, t.Any] = field(default_factory=dict)
    error: str | None = None


def feed_states(
    conn: sa.Connection, platforms: Mapping[str, str] | None = None
) -> list[FeedState]:
    """Every Currents feed with its state and backlog, by name (configured feeds, and any feed
    that still has events). ``platforms``: the configured feeds' platforms, by name."""
    platforms = platforms or {}
    return [
        FeedState(
            name=f.name,
            platform=platforms.get(f.name, "unconfigured"),
            state=f.state,
            backlog=f.backlog,
            oldest_event_at=f.oldest_received_at,
            last_error=f.reason,
        )
        for f in feed_status(conn, list(platforms))
    ]


def job_runs(conn: sa.Connection, *, after: int | None = None, limit: int = 100) -> list[JobRun]:
    """Job runs, newest first (``after``: the id of the last run already seen)."""
    query = sa.select(job_runs_table).order_by(job_runs_table.c.id.desc()).limit(limit)
    if after is not None:
        query = query.where(job_runs_table.c.id < after)
    return [
        JobRun(
            id=r.id,
            job=r.job,
            state=r.outcome,
            started_at=r.started_at,
            finished_at=r.finished_at,
            summary=dict(r.counts or {}),
            error=r.error,
        )
        for r in conn.execute(query)
    ]
