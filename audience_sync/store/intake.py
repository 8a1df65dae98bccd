"""The Firehose intake repository: applies one validated message to the tables in one
transaction, together with its message id (idempotency, SPEC §3.1) and the outbox marks of the
users it touched (SPEC §4.1). The view calls :func:`receive_subscription` and
:func:`receive_membership_change`; nothing here talks to Braze.

Order independence: a membership row carries the ``timestamp_ms`` of the message that set it,
and an upsert only overwrites a row that is not newer, so a late retry of an older message
never undoes a newer one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import operator
import threading
import typing as t
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.account import (
    ConnectionSettings,
    merge_settings,
    parse_connection_settings,
    settings_fingerprint,
)
from audience_sync.firehose.messages import (
    Account,
    MembershipChangeRequest,
    SettingValue,
    SubscriptionRequest,
)
from audience_sync.firehose.plan import MembershipPlan, merge_push_tokens, plan_membership_changes
from audience_sync.settings import Settings
from audience_sync.store import cleanups, counters
from audience_sync.store.dialect import cached_statement, insert
from audience_sync.store.outbox import PENDING, on_conflict_requeue
from audience_sync.store.schema import (
    audiences,
    connections,
    firehose_messages,
    memberships,
    outbox,
    users,
    workspaces,
)
from audience_sync.store.transactions import TRANSIENT_SQLSTATES

logger = logging.getLogger(__name__)

CONNECTION_ACTIVE = "active"
CONNECTION_INVALID = "invalid_settings"
AUDIENCE_ACTIVE = "active"
AUDIENCE_REMOVED = "removed"
WORKSPACE_ACTIVE = "active"
WORKSPACE_SUSPENDED = "suspended"

MAX_ATTEMPTS = 3
"""Transactions tried per message: a unique-key race or a deadlock between concurrent
requests is resolved by running the message again (a repeated id is then a duplicate)."""
IN_CHUNK = 500
"""Values per ``IN (...)`` list, well under SQLite's bound-parameter limit."""


@dataclass(frozen=True, kw_only=True)
class IntakeOptions:
    """The settings the intake needs, read once from :class:`Settings`."""

    connection_overrides: Callable[[int], Mapping[str, str]]
    allowed_custom_endpoints: tuple[str, ...] = ()
    coalesce_s: float = 0.0
    suspend_on_auth_failure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeOptions:
        """Pick the Firehose intake's values out of the process settings."""
        return cls(
            connection_overrides=settings.connection_overrides,
            allowed_custom_endpoints=tuple(settings.get("braze.allowed_custom_endpoints")),
            coalesce_s=settings.get("delivery.coalesce_s"),
            suspend_on_auth_failure=settings.get("firehose.suspend_on_auth_failure"),
        )


@dataclass(frozen=True, kw_only=True)
class IntakeResult:
    """What the reply and the log line need to know."""

    duplicate: bool = False
    suspend_subscription: bool = False
    users: int = 0
    memberships: int = 0
    enqueued: int = 0
    connection_state: str | None = None


@dataclass(frozen=True, kw_only=True)
class _PreparedSettings:
    """A message's account settings, merged with the local overrides and parsed."""

    raw: Mapping[str, SettingValue]
    parsed: ConnectionSettings
    fingerprint: str
    has_overrides: bool


@dataclass(frozen=True, kw_only=True)
class _Connection:
    account_id: int
    settings: ConnectionSettings
    state: str
    workspace_id: int | None
    workspace_state: str | None

    @property
    def delivery_workspace(self) -> int | None:
        """The workspace to mark users dirty in, or None while deliveries wait."""
        return self.workspace_id if self.state == CONNECTION_ACTIVE else None


# --- entry points -----------------------------------------------------------------------------


def receive_subscription(
    engine: sa.Engine, message: SubscriptionRequest, options: IntakeOptions, *, now: float
) -> IntakeResult:
    """Apply an ``audience_subscription_request`` (SPEC §3.2): add, rename or remove."""
    prepared = _prepare_settings(engine, message.account, options)

    def work(conn: sa.Connection) -> IntakeResult:
        if not _record_message(conn, message.id, message.type, message.account.account_id, now):
            return _duplicate(conn, message.account.account_id, options, now)
        connection = _sync_connection(conn, message.account.account_id, prepared, options, now)
        enqueued = _apply_subscription(conn, message, connection, options, now)
        counters.increment(
            conn,
            {(_scope(message.account.account_id), f"subscription_{message.action}"): 1},
            now=now,
        )
        return IntakeResult(enqueued=enqueued, connection_state=connection.state)

    return _run(engine, message.id, work)


def receive_membership_change(
    engine: sa.Engine, message: MembershipChangeRequest, options: IntakeOptions, *, now: float
) -> IntakeResult:
    """Apply an ``audience_membership_change_request`` (SPEC §3.2, §4.1, §4.2)."""
    account_id = message.account.account_id
    prepared = _prepare_settings(engine, message.account, options)
    # Resolving profiles is pure: do it before taking SQLite's write lock.
    plan = plan_membership_changes(prepared.parsed, message.user_profiles)
    changed_at = message.timestamp_ms / 1000 if message.timestamp_ms is not None else now

    def work(conn: sa.Connection) -> IntakeResult:
        if not _record_message(conn, message.id, message.type, account_id, now):
            return _duplicate(conn, account_id, options, now)
        connection = _sync_connection(conn, account_id, prepared, options, now)
        counts, applied = _apply_membership_plan(
            conn, account_id, plan, connection, changed_at, options, now
        )
        counters.increment(conn, counts, now=now)
        return IntakeResult(
            suspend_subscription=_should_suspend(connection.workspace_state, options),
            users=len(plan.users),
            memberships=applied,
            enqueued=len(plan.users) if connection.delivery_workspace is not None else 0,
            connection_state=connection.state,
        )

    return _run(engine, message.id, work)


# --- transaction, idempotency -----------------------------------------------------------------


_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[sa.Engine, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_SQLITE_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(engine: sa.Engine) -> t.ContextManager[object]:
    """SQLite has one writer at a time, and a writer waiting for the lock polls with sleeps
    of up to 100 ms (its busy handler): under concurrent requests that, not the work, made the
    latency. Threads of this process therefore queue on a Python lock first and wake as soon as
    the writer before them commits. PostgreSQL needs no such thing."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _SQLITE_WRITE_LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(engine)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[engine] = threading.Lock()
    return lock


def _run(
    engine: sa.Engine, message_id: str, work: Callable[[sa.Connection], IntakeResult]
) -> IntakeResult:
    """Run ``work`` in one transaction, again after a unique-key race or a deadlock."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with _write_lock(engine), engine.begin() as conn:
                return work(conn)
        except sa.exc.IntegrityError:
            if attempt < MAX_ATTEMPTS:
                logger.info(
                    "firehose message raced another request (attempt %d), running it again",
                    attempt,
                    extra={"action": "firehose_retry", "attempt": attempt, "reason": "conflict"},
                )
                continue
            if _is_recorded(engine, message_id):
                return IntakeResult(duplicate=True)
            raise
        except sa.exc.OperationalError as exc:
            sqlstate = getattr(exc.orig, "sqlstate", None)
            if sqlstate not in TRANSIENT_SQLSTATES or attempt == MAX_ATTEMPTS:
                raise
            logger.info(
                "firehose transaction aborted by the database (attempt %d), running it again",
                attempt,
                extra={"action": "firehose_retry", "attempt": attempt, "reason": sqlstate},
            )
    raise AssertionError("unreachable")  # pragma: no cover


def _record_message(
    conn: sa.Connection, message_id: str, message_type: str, account_id: int, now: float
) -> bool:
    """Insert the message id; False when it was seen before (a retry by mParticle)."""
    stmt = cached_statement(
        conn,
        "intake.firehose_messages",
        lambda: (
            insert(conn, firehose_messages)
            .on_conflict_do_nothing(index_elements=[firehose_messages.c.id])
            # RETURNING rather than rowcount, which psycopg reports as -1 here.
            .returning(firehose_messages.c.id)
        ),
    )
    row = {"id": message_id, "type": message_type, "account_id": account_id, "received_at": now}
    return conn.execute(stmt, row).first() is not None


def _is_recorded(engine: sa.Engine, message_id: str) -> bool:
    with engine.begin() as conn:
        query = sa.select(firehose_messages.c.id).where(firehose_messages.c.id == message_id)
        return conn.execute(query).first() is not None


def _duplicate(
    conn: sa.Connection, account_id: int, options: IntakeOptions, now: float
) -> IntakeResult:
    query = (
        sa.select(workspaces.c.state)
        .select_from(connections.join(workspaces))
        .where(connections.c.account_id == account_id)
    )
    workspace_state = conn.execute(query).scalar()
    counters.increment(conn, {(_scope(account_id), "duplicate_message"): 1}, now=now)
    return IntakeResult(
        duplicate=True, suspend_subscription=_should_suspend(workspace_state, options)
    )


def _should_suspend(workspace_state: str | None, options: IntakeOptions) -> bool:
    """SPEC §5.5: ask mParticle to pause while the Braze key is known bad, if configured."""
    return options.suspend_on_auth_failure and workspace_state == WORKSPACE_SUSPENDED


def _scope(account_id: int) -> str:
    return f"account:{account_id}"


# --- connections and workspaces ---------------------------------------------------------------


def _prepare_settings(
    engine: sa.Engine, account: Account, options: IntakeOptions
) -> _PreparedSettings:
    """Merge and parse the message's settings. A message without ``account_settings`` keeps
    the stored ones (absent is not the same as empty)."""
    raw = account.account_settings
    if raw is None:
        with engine.begin() as conn:
            query = sa.select(connections.c.account_settings).where(
                connections.c.account_id == account.account_id
            )
            raw = conn.execute(query).scalar() or {}
    overrides = options.connection_overrides(account.account_id)
    merged = merge_settings(raw, overrides)
    parsed = parse_connection_settings(
        account.account_id, merged, allowed_custom_endpoints=options.allowed_custom_endpoints
    )
    return _PreparedSettings(
        raw=raw,
        parsed=parsed,
        fingerprint=settings_fingerprint(merged),
        has_overrides=bool(overrides),
    )


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


def _sync_connection(
    conn: sa.Connection,
    account_id: int,
    prepared: _PreparedSettings,
    options: IntakeOptions,
    now: float,
) -> _Connection:
    """Store the connection's settings when they changed (SPEC §3.3), and return its state.

    A change picks the workspace, resumes it if suspended, and marks every user of the
    connection dirty when what Braze should hold may differ: the connection becomes
    deliverable, or its workspace, formats, app id, push platform, email identity or
    update-existing-only flag changed.
    """
    parsed = prepared.parsed
    row = conn.execute(_SELECT_CONNECTION, {"b_account_id": account_id}).first()
    if row is not None and row.settings_fingerprint == prepared.fingerprint:
        return _Connection(
            account_id=account_id,
            settings=parsed,
            state=row.state,
            workspace_id=row.workspace_id,
            workspace_state=row.workspace_state,
        )
    state = CONNECTION_ACTIVE if parsed.is_valid else CONNECTION_INVALID
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
            return _Connection(
                account_id=account_id,
                settings=parsed,
                state=state,
                workspace_id=workspace_id,
                workspace_state=WORKSPACE_ACTIVE if workspace_id is not None else None,
            )
    # Changing an existing connection: lock its row (PostgreSQL) so that two requests with new
    # settings apply one after the other.
    row = conn.execute(_select_connection(account_id).with_for_update(of=connections)).one()
    if row.settings_fingerprint == prepared.fingerprint:
        return _Connection(
            account_id=account_id,
            settings=parsed,
            state=row.state,
            workspace_id=row.workspace_id,
            workspace_state=row.workspace_state,
        )
    workspace_id = row.workspace_id
    workspace_state = row.workspace_state
    if parsed.is_valid:
        workspace_id = _assign_workspace(conn, row.workspace_id, parsed, account_id, now)
        workspace_state = _resume_workspace(conn, workspace_id)
    conn.execute(
        sa.update(connections)
        .where(connections.c.account_id == account_id)
        .values(workspace_id=workspace_id, **values)
    )
    previous = parse_connection_settings(
        account_id,
        merge_settings(row.account_settings or {}, options.connection_overrides(account_id)),
        allowed_custom_endpoints=options.allowed_custom_endpoints,
    )
    enqueued = None
    if (
        state == CONNECTION_ACTIVE
        and workspace_id is not None
        and (
            row.state != CONNECTION_ACTIVE
            or row.workspace_id != workspace_id
            # The stored settings are mParticle's; the overrides they were merged with then are
            # not kept, so with overrides any change may matter.
            or prepared.has_overrides
            or _delivery_changed(previous, parsed)
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
    return _Connection(
        account_id=account_id,
        settings=parsed,
        state=state,
        workspace_id=workspace_id,
        workspace_state=workspace_state,
    )


def _delivery_changed(old: ConnectionSettings, new: ConnectionSettings) -> bool:
    """Whether what Braze should hold for the connection's users may have changed."""
    return (
        old.parts != new.parts
        or old.api_key != new.api_key
        or old.operating_system != new.operating_system
        or old.email_identity_type != new.email_identity_type
        or old.update_existing_only != new.update_existing_only
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
            endpoint=endpoint, key_fingerprint=fingerprint, state=WORKSPACE_ACTIVE, created_at=now
        )
        .on_conflict_do_nothing(
            index_elements=[workspaces.c.endpoint, workspaces.c.key_fingerprint]
        )
    )
    return int(conn.execute(by_key).scalar_one())


def _resume_workspace(conn: sa.Connection, workspace_id: int) -> str:
    """New settings are a new chance: a suspended workspace is active again (SPEC §5.5)."""
    conn.execute(
        sa.update(workspaces)
        .where(workspaces.c.id == workspace_id, workspaces.c.state != WORKSPACE_ACTIVE)
        .values(state=WORKSPACE_ACTIVE, state_reason=None, suspended_at=None, next_probe_at=None)
    )
    return WORKSPACE_ACTIVE


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


# --- outbox, set-based ------------------------------------------------------------------------


_OUTBOX_COLUMNS = (
    "workspace_id",
    "external_id",
    "state",
    "generation",
    "due_at",
    "attempts",
    "enqueued_at",
)


def _enqueue_keys(
    conn: sa.Connection, workspace_id: int, external_ids: Iterable[str], now: float, delay_s: float
) -> None:
    """:func:`audience_sync.store.outbox.enqueue` for one workspace, via :func:`_executemany`."""
    due_at = now + delay_s
    rows = [(workspace_id, external_id, PENDING, 1, due_at, 0, now) for external_id in external_ids]
    _executemany(
        conn, "outbox", lambda: on_conflict_requeue(insert(conn, outbox)), _OUTBOX_COLUMNS, rows
    )


SQLITE_MAX_VARIABLES = 32766
"""Bound parameters per statement SQLite accepts by default (since 3.32)."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    columns: tuple[str, ...]  # in the order the statement binds them
    constants: tuple[t.Any, ...]  # values of the other parameters (ON CONFLICT ... SET)
    constant_names: dict[str, t.Any]
    positions: tuple[str, ...]  # every parameter, for positional paramstyles
    # SQLite multi-row form: "INSERT ... VALUES " + groups + " ON CONFLICT ..."
    head: str | None = None
    group: str | None = None
    tail: str | None = None


_COMPILED: dict[tuple[str, str], _Compiled] = {}


def _compile(
    conn: sa.Connection, key: str, build: Callable[[], t.Any], columns: list[str]
) -> _Compiled:
    cache_key = (conn.dialect.name, key)
    compiled = _COMPILED.get(cache_key)
    if compiled is not None:
        return compiled
    statement = build().compile(dialect=conn.dialect, column_keys=columns)
    sql = str(statement)
    constant_names = {k: v for k, v in statement.params.items() if k not in columns}
    positions = tuple(statement.positiontup or ())
    bound_columns = tuple(p for p in positions if p in columns) or tuple(columns)
    head = group = tail = None
    if positions:
        start = sql.find(" VALUES (")
        end = sql.find(")", start) + 1
        expected = "(" + ", ".join(["?"] * len(columns)) + ")"
        if start >= 0 and sql[start + len(" VALUES ") : end] == expected:
            head, group, tail = sql[: start + len(" VALUES ")], expected, sql[end:]
            assert positions[: len(columns)] == bound_columns
    compiled = _COMPILED[cache_key] = _Compiled(
        sql=sql,
        columns=bound_columns,
        constants=tuple(constant_names[p] for p in positions if p not in columns),
        constant_names=constant_names,
        positions=positions,
        head=head,
        group=group,
        tail=tail,
    )
    return compiled


def _executemany(
    conn: sa.Connection,
    key: str,
    build: Callable[[], t.Any],
    columns: tuple[str, ...],
    rows: list[tuple[t.Any, ...]],
) -> None:
    """Insert many rows with an INSERT built by ``build`` (compiled once per dialect under
    ``key``), without SQLAlchemy's per-row parameter processing, which took a third of a
    500-profile request. Rows are tuples of the values of ``columns`` (every column the
    statement inserts, always the same for one ``key``), with JSON values already encoded as
    text.

    On SQLite the rows go as multi-row ``VALUES`` lists: ``executemany`` releases and retakes
    the GIL around every row, and with other request threads busy in Python each retake waits
    for a switch interval; that convoy, not SQLite, was what limited throughput.
    """
    if not rows:
        return
    compiled = _compile(conn, key, build, list(columns))
    if compiled.columns != columns:
        index = [columns.index(c) for c in compiled.columns]
        rows = [tuple([row[i] for i in index]) for row in rows]
    if compiled.head is not None and compiled.group is not None and compiled.tail is not None:
        width = len(compiled.columns)
        per_statement = max(1, (SQLITE_MAX_VARIABLES - len(compiled.constants)) // width)
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            values = list(itertools.chain.from_iterable(chunk))
            values.extend(compiled.constants)
            groups = ", ".join([compiled.group] * len(chunk))
            conn.exec_driver_sql(compiled.head + groups + compiled.tail, tuple(values))
        return
    names = compiled.columns
    dict_rows = [{**compiled.constant_names, **dict(zip(names, row, strict=True))} for row in rows]
    if compiled.positions:
        every = operator.itemgetter(*compiled.positions, compiled.positions[0])
        conn.exec_driver_sql(compiled.sql, [every(row)[:-1] for row in dict_rows])
    else:
        conn.exec_driver_sql(compiled.sql, dict_rows)


# --- subscriptions ----------------------------------------------------------------------------


def _apply_subscription(
    conn: sa.Connection,
    message: SubscriptionRequest,
    connection: _Connection,
    options: IntakeOptions,
    now: float,
) -> int:
    """Add, rename or remove the audience; returns how many users were marked dirty."""
    account_id, audience_id, name = (
        message.account.account_id,
        message.audience_id,
        message.audience_name,
    )
    key = (audiences.c.account_id == account_id) & (audiences.c.audience_id == audience_id)
    row = conn.execute(sa.select(audiences.c.name, audiences.c.state).where(key)).first()
    mark_members = False
    if message.action == "remove":
        cleanup = connection.settings.cleanup_on_remove
        if row is None:
            _insert_audiences(
                conn, account_id, {audience_id: name}, now, state=AUDIENCE_REMOVED, cleanup=cleanup
            )
        elif row.state != AUDIENCE_REMOVED:
            conn.execute(
                sa.update(audiences)
                .where(key)
                .values(
                    state=AUDIENCE_REMOVED,
                    removed_at=now,
                    cleanup=cleanup,
                    cleanup_done_at=None,
                    updated_at=now,
                )
            )
            # Members get their attributes cleared by the sender (SPEC §7).
            mark_members = cleanup
    elif row is None:
        _insert_audiences(conn, account_id, {audience_id: name}, now)
    elif message.action == "add":
        if row.state != AUDIENCE_ACTIVE or row.name != name:
            conn.execute(
                sa.update(audiences)
                .where(key)
                .values(
                    state=AUDIENCE_ACTIVE,
                    name=name,
                    cleanup=False,
                    cleanup_done_at=None,
                    removed_at=None,
                    updated_at=now,
                )
            )
            mark_members = True
    elif row.name != name:  # update: a rename (SPEC §4.6)
        conn.execute(sa.update(audiences).where(key).values(name=name, updated_at=now))
        mark_members = True
    workspace_id = connection.delivery_workspace
    if mark_members and workspace_id is not None:
        # The members are marked dirty by the cleanup_removed job, page by page (SPEC §7).
        cleanups.record_audience_change(
            conn,
            action=message.action,
            account_id=account_id,
            audience_id=audience_id,
            workspace_id=workspace_id,
            now=now,
        )
    return 0


def _insert_audiences(
    conn: sa.Connection,
    account_id: int,
    names: Mapping[int, str],
    now: float,
    *,
    state: str = AUDIENCE_ACTIVE,
    cleanup: bool = False,
) -> None:
    rows = [
        {
            "account_id": account_id,
            "audience_id": audience_id,
            "name": name,
            "state": state,
            "cleanup": cleanup,
            "created_at": now,
            "updated_at": now,
            "removed_at": now if state == AUDIENCE_REMOVED else None,
        }
        for audience_id, name in sorted(names.items())
    ]
    stmt = insert(conn, audiences).on_conflict_do_nothing(
        index_elements=[audiences.c.account_id, audiences.c.audience_id]
    )
    conn.execute(stmt, rows)


# --- memberships ------------------------------------------------------------------------------


_SELECT_AUDIENCE_STATES = sa.select(audiences.c.audience_id, audiences.c.state).where(
    audiences.c.account_id == sa.bindparam("b_account_id"),
    audiences.c.audience_id.in_(sa.bindparam("b_audience_ids", expanding=True)),
)


def _chunks(values: Sequence[t.Any], size: int = IN_CHUNK) -> Iterable[Sequence[t.Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _apply_membership_plan(
    conn: sa.Connection,
    account_id: int,
    plan: MembershipPlan,
    connection: _Connection,
    changed_at: float,
    options: IntakeOptions,
    now: float,
) -> tuple[Counter[tuple[str, str]], int]:
    """Upsert users and memberships, register unknown audiences, mark users dirty."""
    scope = _scope(account_id)
    counts: Counter[tuple[str, str]] = Counter()
    for reason, n in plan.unresolved.items():
        counts[scope, reason] += n

    states: dict[int, str] = {}
    audience_ids = sorted(plan.audience_names)
    for chunk in _chunks(audience_ids):
        params = {"b_account_id": account_id, "b_audience_ids": list(chunk)}
        states.update((int(a), s) for a, s in conn.execute(_SELECT_AUDIENCE_STATES, params))
    unknown = {a: plan.audience_names[a] for a in audience_ids if a not in states}
    if unknown:
        _insert_audiences(conn, account_id, unknown, now)
    removed = {a for a, s in states.items() if s == AUDIENCE_REMOVED}

    if removed:
        changes = sorted(plan.memberships.items())
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), is_member in changes
            if audience_id not in removed
        ]
        skipped = len(changes) - len(membership_rows)
        if skipped:
            counts[scope, "audience_removed"] += skipped
    else:
        membership_rows = [
            (account_id, external_id, audience_id, is_member, changed_at)
            for (external_id, audience_id), is_member in sorted(plan.memberships.items())
        ]

    external_ids = sorted(plan.users)
    _upsert_users(conn, account_id, plan, external_ids, now)
    if membership_rows:
        _executemany(
            conn,
            "memberships",
            lambda: _memberships_upsert(conn),
            _MEMBERSHIP_COLUMNS,
            membership_rows,
        )
        counts[scope, "memberships_applied"] += len(membership_rows)

    workspace_id = connection.delivery_workspace
    if workspace_id is not None and external_ids:
        _enqueue_keys(conn, workspace_id, external_ids, now, options.coalesce_s)
    return counts, len(membership_rows)


_MEMBERSHIP_COLUMNS = ("account_id", "external_id", "audience_id", "is_member", "changed_at")
_USER_COLUMNS = ("account_id", "external_id", "email", "push_tokens", "mpid", "updated_at")


def _memberships_upsert(conn: sa.Connection) -> t.Any:
    stmt = insert(conn, memberships)
    return stmt.on_conflict_do_update(
        index_elements=[
            memberships.c.account_id,
            memberships.c.external_id,
            memberships.c.audience_id,
        ],
        set_={"is_member": stmt.excluded.is_member, "changed_at": stmt.excluded.changed_at},
        # A late-arriving older message never overrides a newer one.
        where=memberships.c.changed_at <= stmt.excluded.changed_at,
    )


def _upsert_users(
    conn: sa.Connection,
    account_id: int,
    plan: MembershipPlan,
    external_ids: Sequence[str],
    now: float,
) -> None:
    """Email and mpid are only overwritten by a value; push tokens are the union, newest 10.
    ``external_ids``: the plan's users, sorted."""
    with_tokens = sorted(e for e, u in plan.users.items() if u.push_tokens)
    stored: dict[str, list[str]] = {}
    for chunk in _chunks(with_tokens):
        query = (
            sa.select(users.c.external_id, users.c.push_tokens)
            .where(users.c.account_id == account_id, users.c.external_id.in_(chunk))
            .with_for_update()
        )
        stored.update((e, tokens or []) for e, tokens in conn.execute(query))

    token_rows, plain_rows = [], []
    updates = plan.users
    for external_id in external_ids:
        update = updates[external_id]
        if update.push_tokens:
            tokens = merge_push_tokens(stored.get(external_id, []), update.push_tokens)
            token_rows.append(
                (account_id, external_id, update.email, json.dumps(tokens), update.mpid, now)
            )
        else:
            plain_rows.append((account_id, external_id, update.email, "[]", update.mpid, now))
    _executemany(
        conn,
        "users+tokens",
        lambda: _users_upsert(conn, push_tokens=True),
        _USER_COLUMNS,
        token_rows,
    )
    _executemany(
        conn, "users", lambda: _users_upsert(conn, push_tokens=False), _USER_COLUMNS, plain_rows
    )


def _users_upsert(conn: sa.Connection, *, push_tokens: bool) -> t.Any:
    stmt = insert(conn, users)
    set_: dict[str, t.Any] = {
        "email": sa.func.coalesce(stmt.excluded.email, users.c.email),
        "mpid": sa.func.coalesce(stmt.excluded.mpid, users.c.mpid),
        "updated_at": stmt.excluded.updated_at,
    }
    if push_tokens:
        set_["push_tokens"] = stmt.excluded.push_tokens
    return stmt.on_conflict_do_update(
        index_elements=[users.c.account_id, users.c.external_id], set_=set_
    )
