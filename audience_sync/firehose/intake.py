"""The Firehose intake service: commits one validated message, together with its message id
(idempotency, SPEC §3.1). The view calls :func:`receive_subscription` and
:func:`receive_membership_change`; the tables are written by the store's repositories, the
decisions come from the core; nothing here talks to Braze.

A subscription is applied at once. A membership change is resolved into its plan (pure) and the
plan is committed to the journal (:mod:`audience_sync.store.journal`; on SQLite in a file of its
own, :mod:`audience_sync.store.journal_file`, so the answer never waits for delivery's writes);
a worker's :class:`audience_sync.firehose.journal_applier.JournalApplier` applies it to users,
memberships and the outbox (SPEC §4.1) moments later, so the answer costs a fraction of the work.
With ``firehose.apply_in_request`` the request applies the journal itself before answering.

Everything pure (merging and parsing the settings, resolving profiles, encoding the plan) runs
before the write transaction, so SQLite's write lock is held only for the statements.
"""

from __future__ import annotations

import functools
import typing as t
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.connection import EffectiveSettings, effective_settings
from audience_sync.core.membership import plan_membership_changes
from audience_sync.core.states import IntakeCounter, WorkspaceState
from audience_sync.firehose.applier import drain_journal
from audience_sync.firehose.messages import Account, MembershipChangeRequest, SubscriptionRequest
from audience_sync.settings import Settings
from audience_sync.store import counters, journal
from audience_sync.store.audiences import apply_subscription
from audience_sync.store.connections import (
    Connection,
    stored_account_settings,
    sync_connection,
    unchanged_connection,
    workspace_state_of_account,
)
from audience_sync.store.engine import autocommit, read_only
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.messages import is_recorded, record_message
from audience_sync.store.transactions import in_transaction


@dataclass(frozen=True, kw_only=True)
class IntakeOptions:
    """The settings the intake needs, read once from :class:`Settings`."""

    connection_overrides: Callable[[int], Mapping[str, str]]
    allowed_custom_endpoints: tuple[str, ...] = ()
    coalesce_s: float = 0.0
    suspend_on_auth_failure: bool = False
    apply_in_request: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> IntakeOptions:
        """Pick the Firehose intake's values out of the process settings."""
        return cls(
            connection_overrides=settings.connection_overrides,
            allowed_custom_endpoints=tuple(settings.get("braze.allowed_custom_endpoints")),
            coalesce_s=settings.get("delivery.coalesce_s"),
            suspend_on_auth_failure=settings.get("firehose.suspend_on_auth_failure"),
            apply_in_request=settings.get("firehose.apply_in_request"),
        )

    def effective(
        self, account_id: int, account_settings: Mapping[str, object]
    ) -> EffectiveSettings:
        """The connection's effective settings with this process's local overrides."""
        return effective_settings(
            account_id,
            account_settings,
            overrides=self.connection_overrides(account_id),
            allowed_custom_endpoints=self.allowed_custom_endpoints,
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
    journal_seq: int | None = None  # the accepted membership change's journal entry


def receive_subscription(
    engine: sa.Engine, message: SubscriptionRequest, options: IntakeOptions, *, now: float
) -> IntakeResult:
    """Apply an ``audience_subscription_request`` (SPEC §3.2): add, rename or remove."""
    account_id = message.account.account_id
    prepared = _prepare_settings(engine, message.account, options)

    def work(conn: sa.Connection) -> IntakeResult:
        if not record_message(conn, message.id, message.type, account_id, now):
            return _duplicate(conn, account_id, options, now)
        connection = _sync(conn, account_id, prepared, options, now)
        apply_subscription(
            conn,
            account_id=account_id,
            audience_id=message.audience_id,
            name=message.audience_name,
            action=message.action,
            cleanup_on_remove=connection.settings.cleanup_on_remove,
            workspace_id=connection.delivery_workspace,
            now=now,
        )
        counters.increment(
            conn, {(_scope(account_id), f"subscription_{message.action}"): 1}, now=now
        )
        # Members to write again are marked by the cleanup_removed job, not here.
        return IntakeResult(connection_state=connection.state)

    return _run(engine, message.id, work, duplicate=IntakeResult(duplicate=True))


def receive_membership_change(
    engine: sa.Engine, message: MembershipChangeRequest, options: IntakeOptions, *, now: float
) -> IntakeResult:
    """Accept an ``audience_membership_change_request`` (SPEC §3.2, §4.1, §4.2) into the
    journal; applied to the membership state by the journal applier."""
    account_id = message.account.account_id
    prepared = _prepare_settings(engine, message.account, options)
    # Resolving profiles is pure: do it before taking SQLite's write lock.
    plan = plan_membership_changes(prepared.settings, message.user_profiles)
    encoded = journal.encode_plan(plan)
    changed_at = message.timestamp_ms / 1000 if message.timestamp_ms is not None else now

    def append(conn: sa.Connection) -> int:
        return journal.append(
            conn,
            account_id=account_id,
            message_id=message.id,
            changed_at=changed_at,
            profiles=len(message.user_profiles),
            plan=encoded,
            now=now,
        )

    def accept(conn: sa.Connection) -> int | None:
        """Record the id and append the plan; None for a message seen before."""
        if not record_message(conn, message.id, message.type, account_id, now):
            return None
        return append(conn)

    def accepted(connection: Connection, seq: int) -> IntakeResult:
        return IntakeResult(
            journal_seq=seq,
            suspend_subscription=_should_suspend(connection.workspace_state, options),
            users=len(plan.users),
            memberships=len(plan.memberships),
            enqueued=len(plan.users) if connection.delivery_workspace is not None else 0,
            connection_state=connection.state,
        )

    entries_engine = journal_engine(engine)
    accepted_alone = None
    if entries_engine is engine and engine.dialect.name == "postgresql":
        accepted_alone = _accept_postgresql(engine, message, prepared, encoded, changed_at, now)

    def answer(connection: Connection, seq: int | None) -> IntakeResult:
        """The answer once the journal took the message (``seq``), or found it a duplicate."""
        if seq is None:
            return in_transaction(
                engine,
                lambda conn: _duplicate(conn, account_id, options, now),
                action="firehose_duplicate",
                priority=True,
            )
        return accepted(connection, seq)

    if accepted_alone is not None:
        result = answer(*accepted_alone)
    elif entries_engine is engine:

        def work(conn: sa.Connection) -> IntakeResult:
            if not record_message(conn, message.id, message.type, account_id, now):
                return _duplicate(conn, account_id, options, now)
            connection = _sync(conn, account_id, prepared, options, now)
            return accepted(connection, append(conn))

        result = _run(engine, message.id, work, duplicate=IntakeResult(duplicate=True))
    else:
        # The journal has a file of its own (store/journal_file.py): the main database is
        # written only when the settings changed, before the message is accepted (a crash
        # between the two: mParticle's retry finds the settings stored and is accepted).
        connection = _unchanged_connection(engine, account_id, prepared)
        if connection is None:
            connection = in_transaction(
                engine,
                lambda conn: _sync(conn, account_id, prepared, options, now),
                action="firehose_settings",
                retry_conflicts=True,
                priority=True,
            )
        result = answer(connection, _run(entries_engine, message.id, accept, duplicate=None))
    if options.apply_in_request and result.journal_seq is not None:
        drain_journal(engine, coalesce_s=options.coalesce_s, up_to=result.journal_seq)
    return result


def _accept_postgresql(
    engine: sa.Engine,
    message: MembershipChangeRequest,
    prepared: EffectiveSettings,
    plan: bytes,
    changed_at: float,
    now: float,
) -> tuple[Connection, int | None] | None:
    """PostgreSQL, when the connection's settings are stored already (every message but the
    first or a changed one): the read of the connection, then the id and the plan in one
    statement, each committing alone: two round trips where the transaction took six (BEGIN,
    the id, the connection, the plan, COMMIT, and the pool's ping), each a wait for a backend
    on a busy server. A settings change between the two is the same as one just after the
    message. None when the settings must be written: the caller's transaction does it all."""
    with autocommit(engine) as conn:
        connection = unchanged_connection(conn, message.account.account_id, prepared)
        if connection is None:
            return None
        seq = journal.accept(
            conn,
            account_id=message.account.account_id,
            message_id=message.id,
            message_type=message.type,
            changed_at=changed_at,
            profiles=len(message.user_profiles),
            plan=plan,
            now=now,
        )
    return connection, seq


T = t.TypeVar("T")


def _run(
    engine: sa.Engine,
    message_id: str,
    work: Callable[[sa.Connection], T],
    *,
    duplicate: T,
) -> T:
    """Run ``work`` in one transaction, again after a unique-key race or a deadlock; a
    repeated id is then a duplicate, answered with ``duplicate``."""
    try:
        return in_transaction(engine, work, action="firehose", retry_conflicts=True, priority=True)
    except sa.exc.IntegrityError:
        if is_recorded(engine, message_id):
            return duplicate
        raise


def _unchanged_connection(
    engine: sa.Engine, account_id: int, prepared: EffectiveSettings
) -> Connection | None:
    """The stored connection when these settings are already its settings (a read, no lock)."""
    with read_only(engine) as conn:
        return unchanged_connection(conn, account_id, prepared)


def _prepare_settings(
    engine: sa.Engine, account: Account, options: IntakeOptions
) -> EffectiveSettings:
    """Merge and parse the message's settings. A message without ``account_settings`` keeps
    the stored ones (absent is not the same as empty)."""
    raw = account.account_settings
    if raw is None:
        with read_only(engine) as conn:
            raw = stored_account_settings(conn, account.account_id)
    return options.effective(account.account_id, raw)


def _sync(
    conn: sa.Connection,
    account_id: int,
    prepared: EffectiveSettings,
    options: IntakeOptions,
    now: float,
) -> Connection:
    return sync_connection(
        conn,
        account_id,
        prepared,
        derive=functools.partial(options.effective, account_id),
        now=now,
    )


def _duplicate(
    conn: sa.Connection, account_id: int, options: IntakeOptions, now: float
) -> IntakeResult:
    workspace_state = workspace_state_of_account(conn, account_id)
    counters.increment(conn, {(_scope(account_id), IntakeCounter.DUPLICATE_MESSAGE): 1}, now=now)
    return IntakeResult(
        duplicate=True, suspend_subscription=_should_suspend(workspace_state, options)
    )


def _should_suspend(workspace_state: str | None, options: IntakeOptions) -> bool:
    """SPEC §5.5: ask mParticle to pause while the Braze key is known bad, if configured."""
    return options.suspend_on_auth_failure and workspace_state == WorkspaceState.SUSPENDED


def _scope(account_id: int) -> str:
    return f"account:{account_id}"
