"""The Firehose journal: accepted membership changes waiting to be applied (SPEC §3.1, §9).

mParticle wants an answer within 100 ms. Applying a 500-profile message to the users,
memberships and outbox tables costs several times what validating and storing it does, so the
intake commits the message's resolved plan here, together with its id (idempotency), and
answers; a worker applies journal entries in arrival order and deletes each in the same
transaction as its effects. A crash at any point leaves either the entry or its effects, never
both and never neither.

Plans are stored as compact JSON (orjson): ``{"u": users, "m": memberships, "a": audience
names, "x": unresolved counts}``, every part a list of arrays.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from audience_sync.core.membership import MembershipPlan, UserUpdate
from audience_sync.store.bulk import postgresql_intake
from audience_sync.store.schema import firehose_journal
from audience_sync.store.statements import chunks


@dataclass(frozen=True, kw_only=True)
class JournalEntry:
    """One accepted membership change request, as the applier needs it."""

    seq: int
    account_id: int
    message_id: str
    changed_at: float
    plan: bytes  # decode with decode_plan


@dataclass(frozen=True, kw_only=True)
class JournalBacklog:
    """Entries waiting, the profiles they hold, and when the oldest one was accepted."""

    entries: int
    profiles: int
    oldest_received_at: float | None


def encode_plan(plan: MembershipPlan) -> bytes:
    """The plan as compact JSON bytes (see the module docstring)."""
    return orjson.dumps(
        {
            "u": [[u.external_id, u.email, u.mpid, u.push_tokens] for u in plan.users.values()],
            "m": [[e, a, is_member] for (e, a), is_member in plan.memberships.items()],
            "a": [[a, name] for a, name in plan.audience_names.items()],
            "x": [[reason, n] for reason, n in plan.unresolved.items()],
        }
    )


def decode_plan(data: bytes) -> MembershipPlan:
    """The plan :func:`encode_plan` stored."""
    raw = orjson.loads(data)
    return MembershipPlan(
        users={
            e: UserUpdate(external_id=e, email=email, mpid=mpid, push_tokens=tokens)
            for e, email, mpid, tokens in raw["u"]
        },
        memberships={(e, a): is_member for e, a, is_member in raw["m"]},
        audience_names={a: name for a, name in raw["a"]},
        unresolved=Counter({reason: n for reason, n in raw["x"]}),
    )


def append(
    conn: sa.Connection,
    *,
    account_id: int,
    message_id: str,
    changed_at: float,
    profiles: int,
    plan: bytes,
    now: float,
) -> int:
    """Add one accepted message's encoded plan at the end of the journal; returns its seq."""
    result = conn.execute(
        firehose_journal.insert(),
        {
            "account_id": account_id,
            "message_id": message_id,
            "changed_at": changed_at,
            "received_at": now,
            "profiles": profiles,
            "plan": plan,
        },
    )
    return int(result.inserted_primary_key[0])


def accept(
    conn: sa.Connection,
    *,
    account_id: int,
    message_id: str,
    message_type: str,
    changed_at: float,
    profiles: int,
    plan: bytes,
    now: float,
) -> int | None:
    """PostgreSQL: record the message's id and :func:`append` its plan in one statement, which
    commits alone on an autocommit connection; None for an id seen before (nothing appended)."""
    return postgresql_intake.accept_message(
        conn,
        message_id=message_id,
        message_type=message_type,
        account_id=account_id,
        changed_at=changed_at,
        profiles=profiles,
        plan=plan,
        now=now,
    )


def oldest(
    conn: sa.Connection,
    *,
    max_profiles: int,
    exclude: frozenset[int] = frozenset(),
    up_to: int | None = None,
) -> list[JournalEntry]:
    """The oldest entries not in ``exclude`` (and not after ``up_to``), at least one (if any)
    and as many as fit in ``max_profiles``."""
    query = (
        sa.select(
            firehose_journal.c.seq,
            firehose_journal.c.account_id,
            firehose_journal.c.message_id,
            firehose_journal.c.changed_at,
            firehose_journal.c.profiles,
            firehose_journal.c.plan,
        )
        .order_by(firehose_journal.c.seq)
        .limit(max(1, max_profiles // 100))
    )
    if exclude:
        query = query.where(firehose_journal.c.seq.not_in(sorted(exclude)))
    if up_to is not None:
        query = query.where(firehose_journal.c.seq <= up_to)
    entries: list[JournalEntry] = []
    total = 0
    for seq, account_id, message_id, changed_at, profiles, plan in conn.execute(query):
        if entries and total + profiles > max_profiles:
            break
        total += profiles
        entries.append(
            JournalEntry(
                seq=seq,
                account_id=account_id,
                message_id=message_id,
                changed_at=changed_at,
                plan=bytes(plan),
            )
        )
    return entries


APPLIER_LOCK_KEY = 0x4155_4453_4A4E  # "AUDSJN"


def lock_applier(conn: sa.Connection) -> None:
    """PostgreSQL: wait until no other transaction applies the journal, and keep that until
    this one ends (a transaction-scoped advisory lock)."""
    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": APPLIER_LOCK_KEY})


def take(conn: sa.Connection, seqs: Sequence[int]) -> set[int]:
    """Delete the entries ``seqs`` in the caller's transaction; returns those that were still
    there (another applier may have taken some: on PostgreSQL its DELETE made this one wait)."""
    taken: set[int] = set()
    for chunk in chunks(list(seqs)):
        query = (
            firehose_journal.delete()
            .where(firehose_journal.c.seq.in_(chunk))
            .returning(firehose_journal.c.seq)
        )
        taken.update(conn.execute(query).scalars())
    return taken


def backlog(conn: sa.Connection) -> JournalBacklog:
    """How much accepted work waits to be applied."""
    entries, profiles, oldest_at = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(firehose_journal.c.profiles), 0),
            sa.func.min(firehose_journal.c.received_at),
        )
    ).one()
    return JournalBacklog(
        entries=int(entries),
        profiles=int(profiles),
        oldest_received_at=float(oldest_at) if oldest_at is not None else None,
    )


def waits(conn: sa.Connection, seq: int) -> bool:
    """Whether the entry ``seq``, or an older one, is still to be applied."""
    query = sa.select(firehose_journal.c.seq).where(firehose_journal.c.seq <= seq).limit(1)
    return conn.execute(query).first() is not None
