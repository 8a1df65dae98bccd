"""Apply the Firehose journal to the membership state (SPEC §4.1): users, memberships, newly
seen audiences and the outbox marks of the users a message touched.

The intake commits each accepted membership change to the journal and answers
(:mod:`audience_sync.firehose.intake`); :class:`~audience_sync.firehose.journal_applier.
JournalApplier`, a thread in a process of its own
under ``run`` (:mod:`audience_sync.sender_process`) or beside the senders of a ``worker``,
applies it in arrival order. Each round takes the oldest entries up to :data:`APPLY_PROFILES`
profiles and ends each entry in the transaction of its effects, so a crash leaves either an entry
or its effects: with the journal in the database (PostgreSQL) the entry is deleted there; with
the journal in a file of its own (SQLite, :mod:`audience_sync.store.journal_file`) it is marked
applied there and deleted from the file afterwards. On SQLite a waiting writer goes first at the
gate but cannot interrupt a running transaction: there the applier works in parts of
:data:`SQLITE_USERS_PER_PART` users and commits between two parts when a priority writer waits
or after :data:`SQLITE_SLICE_S`, so the senders' short transactions get the lock in between.

The connection's delivery workspace is read when the entry is applied: a connection moved or
paused meanwhile marks its users where it now delivers, as a later message would.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.membership import MembershipPlan, split_plan
from audience_sync.store import counters, journal, journal_file
from audience_sync.store.connections import delivery_workspace_of_account
from audience_sync.store.engine import read_only
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.memberships import apply_membership_plan, apply_membership_plans
from audience_sync.store.transactions import in_transaction
from audience_sync.store.writer_gate import priority_writer_waiting

logger = logging.getLogger(__name__)

APPLY_PROFILES = 1000
"""Profiles read per round: about two 500-profile messages (one transaction on PostgreSQL)."""
SQLITE_USERS_PER_PART = 100
"""Users per part on SQLite (a few ms): the longest an intake request that must write the main
database (its connection's settings changed) waits for the applier. 25 cost 13-16 us of CPU per
membership change, 100 11-12 us (the statements' fixed cost); 250 no less."""
SQLITE_SLICE_S = 0.02
"""On SQLite an applier transaction ends after the part that takes it past this long. The
senders wait for SQLite's one write lock between their steps: behind whole rounds (130 ms on
average, up to 460 ms, on the 2-core bench) each of their three transactions per claim waited
that long, and four senders delivered 3,000 users/s."""
SQLITE_SLICE_PAUSE_S = 0.002
"""The applier's pause between two slices, for a waiting sender to take the lock."""
REQUEST_WAIT_POLL_S = 0.05
"""Pause of a request waiting for another one to apply its message."""


Complete = Callable[[sa.Connection, list[journal.JournalEntry]], set[int]]
"""Ends entries in the transaction of their effects; returns the seqs this transaction ended
(the others were ended by another applier, and their effects must not be repeated)."""


def apply_journal(
    engine: sa.Engine,
    *,
    coalesce_s: float,
    max_profiles: int = APPLY_PROFILES,
    exclude: frozenset[int] = frozenset(),
    up_to: int | None = None,
    in_parts: bool = True,
    ended: set[int] | None = None,
) -> int:
    """Apply the oldest journal entries (not in ``exclude``, none after ``up_to``); returns
    how many were ended, 0 when none waits. ``in_parts``: on SQLite, in parts that let a
    waiting writer in (the applier's way; a request applying its own message applies in one
    transaction). ``ended``: with the journal in a file of its own, the seqs of the entries
    ended are added to it, for :func:`delete_ended` later, instead of being deleted now."""
    return _apply_from(
        engine,
        journal_engine(engine),
        coalesce_s=coalesce_s,
        max_profiles=max_profiles,
        exclude=exclude,
        up_to=up_to,
        in_parts=in_parts,
        ended=ended,
    )


def delete_ended(engine: sa.Engine, seqs: set[int]) -> None:
    """Delete entries ended (marked applied) from the journal file, and forget their marks."""
    if seqs:
        _delete_applied(engine, journal_engine(engine), seqs)


def drain_main_database_journal(engine: sa.Engine, *, coalesce_s: float) -> int:
    """Apply what an earlier version left in the main database's journal table, where an
    SQLite file database now keeps its journal in a file of its own (each entry is deleted with
    its effects, as on PostgreSQL). Returns how many were applied."""
    if journal_engine(engine) is engine:
        return 0
    applied = 0
    while n := _apply_from(engine, engine, coalesce_s=coalesce_s, max_profiles=APPLY_PROFILES):
        applied += n
    return applied


def _apply_from(
    engine: sa.Engine,
    entries_engine: sa.Engine,
    *,
    coalesce_s: float,
    max_profiles: int,
    exclude: frozenset[int] = frozenset(),
    up_to: int | None = None,
    in_parts: bool = True,
    ended: set[int] | None = None,
) -> int:
    if entries_engine is engine and engine.dialect.name == "postgresql":
        return _apply_postgresql(
            engine, coalesce_s=coalesce_s, max_profiles=max_profiles, exclude=exclude, up_to=up_to
        )
    with read_only(entries_engine) as conn:
        entries = journal.oldest(conn, max_profiles=max_profiles, exclude=exclude, up_to=up_to)
    if not entries:
        return 0
    separate = entries_engine is not engine
    done: set[int] = set()
    if separate:
        # Applied before a crash (or by another request) but still in the journal file.
        with read_only(engine) as conn:
            done = journal_file.applied_among(conn, [(e.seq, e.message_id) for e in entries])
        entries = [entry for entry in entries if entry.seq not in done]
    if entries:
        now = time.time()
        complete: Complete = (
            functools.partial(_mark_applied, now=now) if separate else _take_from_journal
        )
        plans = {entry.seq: journal.decode_plan(entry.plan) for entry in entries}
        if in_parts and engine.dialect.name == "sqlite":
            _apply_yielding(engine, entries, plans, coalesce_s=coalesce_s, complete=complete)
        else:
            _apply_together(engine, entries, plans, coalesce_s=coalesce_s, complete=complete)
    if separate:
        seqs = done | {entry.seq for entry in entries}
        if ended is None:
            _delete_applied(engine, entries_engine, seqs)
        else:
            ended.update(seqs)
    return len(done) + len(entries)


def _apply_postgresql(
    engine: sa.Engine,
    *,
    coalesce_s: float,
    max_profiles: int,
    exclude: frozenset[int],
    up_to: int | None,
) -> int:
    """PostgreSQL: one applier at a time (every worker runs one) takes the oldest entries and
    applies them in one transaction, each account's entries as one write per table
    (:func:`~audience_sync.store.memberships.apply_membership_plans`). The appliers used to read
    the same oldest entries and the second one waited on the first one's DELETE for its whole
    transaction, then found nothing: a transaction-scoped advisory lock makes it wait before
    reading instead, and then read the next entries (arrival order, one applier's throughput;
    a killed applier's lock goes with its session)."""

    def work(conn: sa.Connection) -> int:
        journal.lock_applier(conn)
        entries = journal.oldest(conn, max_profiles=max_profiles, exclude=exclude, up_to=up_to)
        if not entries:
            return 0
        taken = journal.take(conn, [entry.seq for entry in entries])
        by_account: dict[int, list[tuple[float, MembershipPlan]]] = {}
        for entry in entries:
            if entry.seq in taken:
                plan = journal.decode_plan(entry.plan)
                by_account.setdefault(entry.account_id, []).append((entry.changed_at, plan))
        now = time.time()
        counts: Counter[tuple[str, str]] = Counter()
        for account_id, plans in by_account.items():
            by_reason, _ = apply_membership_plans(
                conn,
                account_id=account_id,
                plans=plans,
                workspace_id=delivery_workspace_of_account(conn, account_id),
                coalesce_s=coalesce_s,
                now=now,
            )
            scope = f"account:{account_id}"
            counts.update({(scope, reason): n for reason, n in by_reason.items()})
        counters.increment(conn, dict(counts), now=now)
        return len(taken)

    # A unique-key race on a new user's push tokens (store.memberships) is resolved by a rerun.
    return in_transaction(engine, work, action="firehose_apply", retry_conflicts=True)


def _take_from_journal(conn: sa.Connection, entries: list[journal.JournalEntry]) -> set[int]:
    return journal.take(conn, [entry.seq for entry in entries])


def _mark_applied(
    conn: sa.Connection, entries: list[journal.JournalEntry], *, now: float
) -> set[int]:
    return journal_file.mark_applied(conn, [(e.seq, e.message_id) for e in entries], now=now)


def _delete_applied(engine: sa.Engine, entries_engine: sa.Engine, seqs: set[int]) -> None:
    """Delete applied entries from the journal file, then forget their marks (and any mark
    older than the oldest entry left, should a crash have come between the two)."""
    ordered = sorted(seqs)

    def delete(conn: sa.Connection) -> int | None:
        journal.take(conn, ordered)
        return journal_file.oldest_seq(conn)

    oldest = in_transaction(entries_engine, delete, action="firehose_journal_delete")

    def forget(conn: sa.Connection) -> None:
        journal_file.forget_marks(conn, below=oldest)

    in_transaction(engine, forget, action="firehose_applied_forget")


def _apply_together(
    engine: sa.Engine,
    entries: list[journal.JournalEntry],
    plans: dict[int, MembershipPlan],
    *,
    coalesce_s: float,
    complete: Complete,
) -> int:
    """The entries in one transaction (PostgreSQL, or a request applying its own message).
    Another applier waits on the entries this one ends and then skips them."""
    now = time.time()

    def work(conn: sa.Connection) -> int:
        taken = complete(conn, entries)
        counts: Counter[tuple[str, str]] = Counter()
        for entry in entries:
            if entry.seq in taken:
                workspace_id = delivery_workspace_of_account(conn, entry.account_id)
                by_reason = _apply_part(
                    conn, entry, plans[entry.seq], coalesce_s, now, workspace_id=workspace_id
                )
                counts.update(_scoped(entry, by_reason))
        counters.increment(conn, dict(counts), now=now)
        return len(taken)

    # A unique-key race on a new user's push tokens (store.memberships) is resolved by a rerun.
    return in_transaction(engine, work, action="firehose_apply", retry_conflicts=True)


@dataclass(frozen=True)
class _Step:
    """One part of one entry; the last part of an entry deletes it and writes its counts."""

    entry: journal.JournalEntry
    part: MembershipPlan
    last: bool


def _apply_yielding(
    engine: sa.Engine,
    entries: list[journal.JournalEntry],
    plans: dict[int, MembershipPlan],
    *,
    coalesce_s: float,
    complete: Complete,
) -> int:
    """SQLite: the entries in parts of :data:`SQLITE_USERS_PER_PART` users, in transactions of
    about :data:`SQLITE_SLICE_S`: the transaction also commits between two parts whenever an
    intake request waits for the one write lock, so that request waits for one part at most.
    An entry is deleted, and its counters written, with its last part: after a crash between
    parts it is applied again from the start, which sets the same values (upserts) and counts
    it once. One process sends on SQLite, so no other applier runs meanwhile."""
    steps = []
    for entry in entries:
        parts = split_plan(plans[entry.seq], SQLITE_USERS_PER_PART)
        steps += [_Step(entry, part, n == len(parts)) for n, part in enumerate(parts, start=1)]
    done = 0
    counts: dict[int, Counter[str]] = {}
    while done < len(steps):
        work = functools.partial(
            _apply_steps,
            engine=engine,
            steps=steps,
            start=done,
            counts=counts,
            coalesce_s=coalesce_s,
            complete=complete,
            now=time.time(),
        )
        done, counts = in_transaction(engine, work, action="firehose_apply", retry_conflicts=True)
        if done < len(steps):
            # flock hands the lock to no one: a releasing process that asks again at once gets
            # it before the sender it woke runs. A pause lets that sender in.
            time.sleep(SQLITE_SLICE_PAUSE_S)
    return len(entries)


def _apply_steps(
    conn: sa.Connection,
    *,
    engine: sa.Engine,
    steps: list[_Step],
    start: int,
    counts: dict[int, Counter[str]],
    coalesce_s: float,
    complete: Complete,
    now: float,
) -> tuple[int, dict[int, Counter[str]]]:
    """Steps from ``start`` until done, an intake request waits or the slice is over; returns
    where it stopped and the counts of the entries begun (new objects: a rerun starts from the
    caller's)."""
    ends_by = time.perf_counter() + SQLITE_SLICE_S
    counts = {seq: Counter(c) for seq, c in counts.items()}
    # Read once per account and transaction: the one writer's own transaction is the only
    # thing that could change them (the parts are small, these reads were a fifth of the work).
    workspaces: dict[int, int | None] = {}
    audience_states: dict[int, dict[int, str]] = {}
    position = start
    while position < len(steps):
        step = steps[position]
        seq = step.entry.seq
        account_id = step.entry.account_id
        if account_id not in workspaces:
            workspaces[account_id] = delivery_workspace_of_account(conn, account_id)
        counts[seq] = counts.get(seq, Counter()) + _apply_part(
            conn,
            step.entry,
            step.part,
            coalesce_s,
            now,
            workspace_id=workspaces[account_id],
            known_states=audience_states.setdefault(account_id, {}),
        )
        if step.last and complete(conn, [step.entry]):
            counters.increment(conn, _scoped(step.entry, counts.pop(seq)), now=now)
        position += 1
        if position < len(steps) and (
            time.perf_counter() > ends_by or priority_writer_waiting(engine)
        ):
            break
    return position, counts


def _apply_part(
    conn: sa.Connection,
    entry: journal.JournalEntry,
    plan: MembershipPlan,
    coalesce_s: float,
    now: float,
    *,
    workspace_id: int | None,
    known_states: dict[int, str] | None = None,
) -> Counter[str]:
    by_reason, _ = apply_membership_plan(
        conn,
        account_id=entry.account_id,
        plan=plan,
        workspace_id=workspace_id,
        changed_at=entry.changed_at,
        coalesce_s=coalesce_s,
        now=now,
        known_states=known_states,
    )
    return by_reason


def _scoped(entry: journal.JournalEntry, by_reason: Counter[str]) -> dict[tuple[str, str], int]:
    scope = f"account:{entry.account_id}"
    return {(scope, reason): n for reason, n in by_reason.items()}


def drain_journal(engine: sa.Engine, *, coalesce_s: float, up_to: int | None = None) -> int:
    """Apply waiting entries, every one or (``up_to``) until that entry and the older ones are
    applied: ``firehose.apply_in_request`` applies its own message, not those that keep
    arriving after it. Returns how many entries this call applied."""
    applied = 0
    while up_to is None or _waits(engine, up_to):
        n = apply_journal(engine, coalesce_s=coalesce_s, up_to=up_to, in_parts=False)
        if n == 0:
            if up_to is None:
                break
            time.sleep(REQUEST_WAIT_POLL_S)  # another request is applying it
        applied += n
    return applied


def _waits(engine: sa.Engine, seq: int) -> bool:
    with read_only(journal_engine(engine)) as conn:
        return journal.waits(conn, seq)
