"""What the operator's views show, built from the store's read models and the pure core.

Shared by the admin API, the dashboard and ``audience-sync status`` so the three always agree.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import asdict

import sqlalchemy as sa

from audience_sync import __version__
from audience_sync.admin.feeds import feed_platforms
from audience_sync.core.attributes import PUSH_TOKENS_KEY, UPDATE_EXISTING_ONLY_KEY
from audience_sync.core.connection import effective_settings
from audience_sync.core.delivery_plan import plan_batch
from audience_sync.core.state import Claim
from audience_sync.core.states import ConnectionState
from audience_sync.runtime import Runtime
from audience_sync.store import activity, reads
from audience_sync.store.engine import read_only
from audience_sync.store.migrate import is_current

OLD_BACKLOG_S = 300.0
"""A pending user older than this is worth a look (the normal path takes seconds)."""
SCHEMA_CHECK_S = 60.0
"""How long a "schema is current" answer is reused: Alembic's check is not free (and logs)."""

_schema_checked: dict[int, tuple[float, bool]] = {}


def _schema_current(engine: sa.Engine, now: float) -> bool:
    checked = _schema_checked.get(id(engine))
    if checked is not None and checked[1] and now - checked[0] < SCHEMA_CHECK_S:
        return True
    current = is_current(engine)
    _schema_checked[id(engine)] = (now, current)
    return current


def status(runtime: Runtime, *, now: float) -> dict[str, t.Any]:
    """The engine at a glance, with ``healthy`` and the ``problems`` that make it not so."""
    problems: list[str] = []
    try:
        schema_current = _schema_current(runtime.engine, now)
        with read_only(runtime.engine) as conn:
            summary = activity.status(conn, now=now)
            feeds = reads.feed_states(conn, feed_platforms(runtime.settings))
    except sa.exc.SQLAlchemyError as exc:
        return {
            "healthy": False,
            "version": __version__,
            "database": runtime.engine.dialect.name,
            "schema_current": False,
            "problems": [f"database unavailable ({type(exc).__name__})"],
        }
    body: dict[str, t.Any] = asdict(summary)
    backlog = summary.backlog
    age = now - backlog.oldest_pending_at if backlog.oldest_pending_at is not None else None
    body["backlog"]["oldest_pending_age_s"] = round(age, 1) if age is not None else None
    waiting_age = (
        now - backlog.firehose_oldest_at if backlog.firehose_oldest_at is not None else None
    )
    body["backlog"]["firehose_oldest_age_s"] = (
        round(waiting_age, 1) if waiting_age is not None else None
    )
    if not schema_current:
        problems.append("database schema not current: run `audience-sync db upgrade`")
    if summary.workspaces_suspended:
        problems.append(f"{summary.workspaces_suspended} Braze workspace(s) suspended")
    if summary.connections.get("invalid_settings"):
        problems.append(f"{summary.connections['invalid_settings']} connection(s) invalid")
    if backlog.dead:
        problems.append(f"{backlog.dead} user(s) dead-lettered (replay them)")
    if age is not None and age > OLD_BACKLOG_S:
        problems.append(f"oldest pending user waiting {int(age)} s")
    if waiting_age is not None and waiting_age > OLD_BACKLOG_S:
        problems.append(
            f"{backlog.firehose_waiting} Firehose message(s) not applied for {int(waiting_age)} s"
            " (is a `run` or `worker` process up?)"
        )
    paused = [f.name for f in feeds if f.state not in ("active", "ok")]
    if paused:
        problems.append(f"Currents feed(s) not active: {', '.join(paused)}")
    body.update(
        healthy=schema_current and not summary.workspaces_suspended,
        version=__version__,
        database=runtime.engine.dialect.name,
        schema_current=schema_current,
        feeds=len(feeds),
        problems=problems,
    )
    return body


def user_detail(runtime: Runtime, account_id: int, external_id: str) -> dict[str, t.Any] | None:
    """Desired and acknowledged attributes of one user, the write still pending, and the last
    outcomes; ``None`` if the connection has no such user.

    Desired is the whole Braze user (every connection sharing the workspace contributes),
    planned by the same pure function the senders use (:func:`plan_batch`).
    """
    settings = runtime.settings
    with read_only(runtime.engine) as conn:
        record = reads.user_record(conn, account_id, external_id)
        if record is None:
            return None
        snapshot = (
            reads.user_snapshot(conn, record.workspace_id, external_id)
            if record.workspace_id is not None
            else None
        )
    desired_map: dict[str, t.Any] = {}
    pending: dict[str, t.Any] = {}
    flags = set(record.flags)
    waiting = None
    if snapshot is not None and record.workspace_id is not None:
        active = {}
        for c in snapshot.connections:
            if c.state != ConnectionState.ACTIVE:
                continue
            parsed = effective_settings(
                c.account_id,
                c.account_settings,
                overrides=settings.connection_overrides(c.account_id),
                allowed_custom_endpoints=settings.get("braze.allowed_custom_endpoints"),
            ).settings
            if parsed.is_valid:
                active[c.account_id] = parsed
        claim = Claim(
            workspace_id=record.workspace_id,
            external_id=external_id,
            generation=0,
            attempts=record.outbox_attempts,
            first_failure_at=None,
        )
        plan = plan_batch(
            [claim],
            snapshot,
            active,
            # Past the user's last write, so the resend spacing never hides the plan.
            now=max(time.time(), record.last_write_at or 0.0),
            min_resend_s=0.0,
            array_max_length=settings.get("braze.array_max_length"),
            array_write=settings.get("braze.array_write"),
        )
        for p in plan.pending:
            desired_map = dict(p.write.acknowledged)
            flags |= p.flags
            pending = {
                k: v
                for k, v in p.write.attributes.items()
                if k not in ("external_id", UPDATE_EXISTING_ONLY_KEY)
            }
        for row in plan.unchanged:
            desired_map = dict(row.attributes)
            flags |= set(row.flags)
        if plan.held_back:
            waiting = "a connection sharing this Braze workspace has invalid settings"
    outcomes: list[dict[str, t.Any]] = []
    if waiting is not None:
        outcomes.append({"kind": "waiting", "outcome": waiting})
    if record.last_outcome is not None:
        outcomes.append(
            {"kind": "braze", "outcome": record.last_outcome, "at": record.last_outcome_at}
        )
    if record.outbox_state is not None:
        outcomes.append(
            {
                "kind": "outbox",
                "outcome": record.outbox_state
                + (f": {record.outbox_reason}" if record.outbox_reason else ""),
                "attempts": record.outbox_attempts,
                "due_at": record.outbox_due_at,
            }
        )
    return {
        "account_id": account_id,
        "external_id": external_id,
        "workspace_id": record.workspace_id,
        "audiences": [
            {"audience_id": a, "name": n, "is_member": m} for a, n, m in record.audiences
        ],
        "desired": _masked(desired_map),
        "acknowledged": _masked(record.acknowledged),
        "pending": _masked(pending),
        "flags": sorted(flags),
        "outcomes": outcomes,
    }


def _masked(attributes: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Attributes with the app key of each push token hidden (it comes from ``apiKey``)."""
    out = dict(attributes)
    tokens = out.get(PUSH_TOKENS_KEY)
    if isinstance(tokens, list):
        out[PUSH_TOKENS_KEY] = [_mask_token(pair) for pair in tokens]
    return out


def _mask_token(pair: t.Any) -> t.Any:
    if isinstance(pair, list | tuple) and pair:
        return [reads.MASK, *pair[1:]]
    if isinstance(pair, dict) and "app_id" in pair:
        return {**pair, "app_id": reads.MASK}
    return pair
