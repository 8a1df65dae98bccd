"""Connections (one mParticle configuration each, SPEC §3.3) and the Braze workspaces they write
to (one REST key on one instance, SPEC §5.5).

:func:`sync_connection` stores a connection's settings when they changed and returns its state;
a change picks the workspace and marks the connection's users dirty when what Braze should hold
may differ. A rejected REST key suspends a workspace (:func:`suspend`) until the settings change
(the intake resumes it) or a periodic probe succeeds (:func:`claim_probes`, :func:`resume`).
"""

from __future__ import annotations

import logging
import typing as t
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.connection import ConnectionSettings, EffectiveSettings, delivery_changed
from audience_sync.core.states import ConnectionState, WorkspaceState
from audience_sync.store import cleanups
from audience_sync.store.schema import connections, workspaces
from audience_sync.store.statements import insert

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Connection:
    """A connection's state after its settings were synced."""

    account_id: int
    settings: ConnectionSettings
    state: str
    workspace_id: int | None
    workspace_state: str | None

    @property
    def delivery_workspace(self) -> int | None:
        """The workspace to mark users dirty in, or None while deliveries wait."""
        return self.workspace_id if self.state == ConnectionState.ACTIVE else None


def stored_account_settings(conn: sa.Connection, account_id: int) -> Mapping[str, t.Any]:
    """The account settings mParticle last sent for the connection (empty if none)."""
    query = sa.select(connections.c.account_settings).where(connections.c.account_id == account_id)
    return conn.execute(query).scalar() or {}


def workspace_state_of_account(conn: sa.Connection, account_id: int) -> str | None:
    """The state of the workspace the connection writes to (None without one)."""
    query = (
        sa.select(workspaces.c.state)
        .select_from(connections.join(workspaces))
        .where(connections.c.account_id == account_id)
    )
    return conn.execute(query).scalar()


def delivery_workspace_of_account(conn: sa.Connection, account_id: int) -> int | None:
    """The workspace to mark the connection's users dirty in, None while deliveries wait
    (no workspace, or the connection not active): :attr:`Connection.delivery_workspace`."""
    row = conn.execute(
        sa.select(connections.c.state, connections.c.workspace_id).where(
            connections.c.account_id == account_id
        )
    ).first()
    if row is None or row.state != ConnectionState.ACTIVE:
        return None
    return t.cast(int | None, row.workspace_id)


def workspace_ids_of_account(conn: sa.Connection, account_id: int) -> list[int]:
    """The workspace the connection writes to, as a list (empty without one)."""
    query = sa.select(connections.c.workspace_id).where(
        connections.c.account_id == account_id, connections.c.workspace_id.is_not(None)
    )
    return list(conn.execute(query).scalars())


def _select_connection(account_id: int | sa.BindParameter[t.Any]) -> sa.Select[t.Any]:
    return (
        sa.select(
            connections.c.settings_fingerprint,
            connections.c.state,
            connections.c.workspace_id,
            connections.c.account_settings,
            workspaces.c.state.label("workspace_state"),
        )
        .select_from(connections.outerjoin(workspaces))
        .where(connections.c.account_id == account_id)
    )


# Built once, with a bound parameter: the hot path neither rebuilds it nor recomputes its key.
_SELECT_CONNECTION = _select_connection(sa.bindparam("b_account_id"))


def unchanged_connection(
    conn: sa.Connection, account_id: int, prepared: EffectiveSettings
) -> Connection | None:
    """The stored connection if its settings are ``prepared`` already, else None (a read:
    :func:`sync_connection` would have nothing to write)."""
    row = conn.execute(_SELECT_CONNECTION, {"b_account_id": account_id}).first()
    if row is not None and row.settings_fingerprint == prepared.fingerprint:
        return _unchanged(account_id, prepared.settings, row)
    return None


def sync_connection(
    conn: sa.Connection,
    account_id: int,
    prepared: EffectiveSettings,
    *,
    derive: Callable[[Mapping[str, t.Any]], EffectiveSettings],
    now: float,
) -> Connection:
    """Store the connection's settings when they changed (SPEC §3.3), and return its state.

    A change picks the workspace, resumes it if suspended, and leaves a pending cleanup (every
    user of the connection to be written again, paged by ``cleanup_removed``; after a move,
    the old workspace settled) when what Braze should hold may differ: the connection becomes
    deliverable, or its workspace, formats, app id, push platform, email identity or
    update-existing-only flag changed. ``derive`` gives the effective settings of the stored
    account settings (:func:`audience_sync.core.connection.effective_settings`).
    """
    parsed = prepared.settings
    row = conn.execute(_SELECT_CONNECTION, {"b_account_id": account_id}).first()
    if row is not None and row.settings_fingerprint == prepared.fingerprint:
        return _unchanged(account_id, parsed, row)
    state = ConnectionState.ACTIVE if parsed.is_valid else ConnectionState.INVALID_SETTINGS
    values = {
        "account_settings": dict(prepared.raw),
        "settings_fingerprint": prepared.fingerprint,
        "state": state,
        "settings_errors": list(parsed.errors),
        "updated_at": now,
    }
    if row is None:
        workspace_id = (
            _assign_workspace(conn, None, parsed, account_id, now) if parsed.is_valid else None
        )
        created = conn.execute(
            insert(conn, connections)
            .values(account_id=account_id, workspace_id=workspace_id, created_at=now, **values)
            .on_conflict_do_nothing(index_elements=[connections.c.account_id])
            .returning(connections.c.account_id)
        ).first()
        if created is not None:
            _log_settings_change(account_id, state, parsed, enqueued=None)
            return Connection(
                account_id=account_id,
                settings=parsed,
                state=state,
                workspace_id=workspace_id,
                workspace_state=WorkspaceState.ACTIVE if workspace_id is not None else None,
            )
    # Changing an existing connection: lock its row (PostgreSQL) so that two requests with new
    # settings apply one after the other.
    row = conn.execute(_select_connection(account_id).with_for_update(of=connections)).one()
    if row.settings_fingerprint == prepared.fingerprint:
        return _unchanged(account_id, parsed, row)
    workspace_id = row.workspace_id
    workspace_state = row.workspace_state
    if parsed.is_valid:
        workspace_id = _assign_workspace(conn, row.workspace_id, parsed, account_id, now)
        # New settings are a new chance: a suspended workspace is active again (SPEC §5.5).
        resume_workspace(conn, workspace_id=workspace_id)
        workspace_state = WorkspaceState.ACTIVE
    conn.execute(
        sa.update(connections)
        .where(connections.c.account_id == account_id)
        .values(workspace_id=workspace_id, **values)
    )
    previous = derive(row.account_settings or {}).settings
    enqueued = None
    if (
        state == ConnectionState.ACTIVE
        and workspace_id is not None
        and (
            row.state != ConnectionState.ACTIVE
            or row.workspace_id != workspace_id
            or prepared.has_overrides  # see EffectiveSettings.has_overrides
            or delivery_changed(previous, parsed)
        )
    ):
        # Paged by the cleanup_removed job, so this request stays O(1) (SPEC §7).
        cleanups.record_connection_change(
            conn,
            account_id=account_id,
            workspace_id=workspace_id,
            old_workspace_id=row.workspace_id,
            clear_old=parsed.cleanup_on_remove,
            old_target=(previous.rest_endpoint, previous.rest_api_key),
            now=now,
        )
        enqueued = 0
    _log_settings_change(account_id, state, parsed, enqueued=enqueued)
    return Connection(
        account_id=account_id,
        settings=parsed,
        state=state,
        workspace_id=workspace_id,
        workspace_state=workspace_state,
    )


def _unchanged(account_id: int, parsed: ConnectionSettings, row: sa.Row[t.Any]) -> Connection:
    """The connection as stored: its settings did not change."""
    return Connection(
        account_id=account_id,
        settings=parsed,
        state=row.state,
        workspace_id=row.workspace_id,
        workspace_state=row.workspace_state,
    )


def _assign_workspace(
    conn: sa.Connection,
    old_workspace_id: int | None,
    parsed: ConnectionSettings,
    account_id: int,
    now: float,
) -> int:
    """Find or create the workspace of ``(rest_endpoint, key_fingerprint)``.

    A key rotation (same endpoint, new key) keeps the workspace row, and with it the
    acknowledged state and the outbox, when no other connection uses the old workspace and the
    new key names no existing one. A new endpoint is another Braze instance: a new workspace.
    """
    endpoint, fingerprint = parsed.rest_endpoint, parsed.key_fingerprint
    by_key = sa.select(workspaces.c.id).where(
        workspaces.c.endpoint == endpoint, workspaces.c.key_fingerprint == fingerprint
    )
    existing = conn.execute(by_key).scalar()
    if existing is not None:
        return int(existing)
    if old_workspace_id is not None:
        old_endpoint = conn.execute(
            sa.select(workspaces.c.endpoint).where(workspaces.c.id == old_workspace_id)
        ).scalar()
        shared = conn.execute(
            sa.select(sa.func.count())
            .select_from(connections)
            .where(
                connections.c.workspace_id == old_workspace_id,
                connections.c.account_id != account_id,
            )
        ).scalar_one()
        if old_endpoint == endpoint and shared == 0:
            conn.execute(
                sa.update(workspaces)
                .where(workspaces.c.id == old_workspace_id)
                .values(key_fingerprint=fingerprint)
            )
            return old_workspace_id
    conn.execute(
        insert(conn, workspaces)
        .values(
            endpoint=endpoint,
            key_fingerprint=fingerprint,
            state=WorkspaceState.ACTIVE,
            created_at=now,
        )
        .on_conflict_do_nothing(
            index_elements=[workspaces.c.endpoint, workspaces.c.key_fingerprint]
        )
    )
    return int(conn.execute(by_key).scalar_one())


def _log_settings_change(
    account_id: int, state: str, parsed: ConnectionSettings, *, enqueued: int | None
) -> None:
    # Only the error messages (which name settings, never their values) are logged.
    logger.info(
        "connection %s settings changed: %s",
        account_id,
        state,
        extra={
            "action": "connection_settings_changed",
            "account_id": account_id,
            "state": state,
            "settings_errors": list(parsed.errors),
            "users_enqueued": enqueued or 0,
        },
    )


# --- workspace suspension ---------------------------------------------------------------------


def suspend_workspace(
    conn: sa.Connection, *, workspace_id: int, reason: str, now: float, probe_at: float
) -> bool:
    """Suspend the workspace; returns True if it was active (first to notice)."""
    result = conn.execute(
        workspaces.update()
        .where(workspaces.c.id == workspace_id, workspaces.c.state == WorkspaceState.ACTIVE)
        .values(
            state=WorkspaceState.SUSPENDED,
            state_reason=reason,
            suspended_at=now,
            next_probe_at=probe_at,
        )
    )
    return bool(result.rowcount)


def resume_workspace(conn: sa.Connection, *, workspace_id: int) -> bool:
    """Resume sending; returns True if it was suspended."""
    result = conn.execute(
        workspaces.update()
        .where(workspaces.c.id == workspace_id, workspaces.c.state == WorkspaceState.SUSPENDED)
        .values(
            state=WorkspaceState.ACTIVE, state_reason=None, suspended_at=None, next_probe_at=None
        )
    )
    return bool(result.rowcount)


def claim_probes(conn: sa.Connection, *, now: float, interval_s: float) -> list[int]:
    """Suspended workspaces whose probe is due; the next probe is pushed back atomically so
    that one sender probes each."""
    due = sa.and_(
        workspaces.c.state == WorkspaceState.SUSPENDED,
        sa.or_(workspaces.c.next_probe_at.is_(None), workspaces.c.next_probe_at <= now),
    )
    result = conn.execute(
        workspaces.update()
        .where(due)
        .values(next_probe_at=now + interval_s)
        .returning(workspaces.c.id)
    )
    return [row.id for row in result]
