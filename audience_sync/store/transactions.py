"""The one transaction runner: run a unit of work in one transaction, again when a second try
can succeed.

- A transient abort by the database: a PostgreSQL deadlock or serialization failure between
  concurrent senders and the intake, or SQLite's writer lock held past the busy timeout. Tried
  again after a short, doubling pause (the other transaction is finishing).
- A unique-key race (``IntegrityError``), only when the caller says the work is safe to run
  again (``retry_conflicts``): two Firehose requests inserting the same new rows. Tried again
  at once; the last one is raised to the caller.

On SQLite every writer first passes one writer gate per database (:mod:`audience_sync.store.
writer_gate`): SQLite has one writer at a time, and its busy handler polls with sleeps of up to
100 ms and is not fair, which under concurrent writers, not the work, made the latency. At the
gate a waiting ``priority`` writer (a Firehose request, which mParticle wants answered within
100 ms) goes before every waiting sender, in this process and, through a lock file, in the
others. PostgreSQL needs no such thing.
"""

from __future__ import annotations

import logging
import time
import typing as t
from collections.abc import Callable

import sqlalchemy as sa

from audience_sync.store.writer_gate import writer_gate

logger = logging.getLogger(__name__)

T = t.TypeVar("T")

TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected."""
MAX_ATTEMPTS = 5
BACKOFF_S = 0.02
"""First pause between tries after a transient abort; doubles each time."""
MAX_CONFLICT_ATTEMPTS = 3
"""Tries of a work whose unique-key race is resolved by running it again."""


def is_transient(exc: sa.exc.OperationalError) -> bool:
    """Whether a fresh try of the same transaction can succeed."""
    if getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def in_transaction(
    engine: sa.Engine,
    work: Callable[[sa.Connection], T],
    *,
    action: str = "transaction",
    retry_conflicts: bool = False,
    priority: bool = False,
) -> T:
    """Run ``work(conn)`` in one write transaction, up to :data:`MAX_ATTEMPTS` times;
    ``priority`` writers (the intake) pass the SQLite writer gate before waiting senders.

    Build every parameter before calling: ``work`` runs while the writer gate is held."""
    conflicts = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with writer_gate(engine, priority=priority), engine.begin() as conn:
                return work(conn)
        except sa.exc.IntegrityError:
            conflicts += 1
            if not retry_conflicts or conflicts >= MAX_CONFLICT_ATTEMPTS:
                raise
            reason = "conflict"
        except sa.exc.OperationalError as exc:
            if not is_transient(exc) or attempt == MAX_ATTEMPTS:
                raise
            reason = getattr(exc.orig, "sqlstate", None) or "locked"
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        logger.info(
            "transaction aborted (attempt %d, %s), running it again",
            attempt,
            reason,
            extra={"action": "db_retry", "during": action, "attempt": attempt, "reason": reason},
        )
    raise AssertionError("unreachable")  # pragma: no cover
