"""The one transaction runner: run a unit of work in one transaction, again when a second try
can succeed.

- A transient abort by the database: a PostgreSQL deadlock or serialization failure between
  concurrent senders and the intake, or SQLite's writer lock held past the busy timeout. Tried
  again after a short, doubling pause (the other transaction is finishing).
- A unique-key race (``IntegrityError``), only when the caller says the work is safe to run
  again (``retry_conflicts``): two Firehose requests inserting the same new rows. Tried again
  at once; the last one is raised to the caller.

On SQLite every writer of this process first queues on one Python lock per engine: SQLite has
one writer at a time, and a writer waiting for its lock polls with sleeps of up to 100 ms (its
busy handler), which under concurrent requests, not the work, made the latency. Queued on a
Python lock, a writer wakes as soon as the one before it commits. PostgreSQL needs no such thing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import typing as t
import weakref
from collections.abc import Callable

import sqlalchemy as sa

logger = logging.getLogger(__name__)

T = t.TypeVar("T")

TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected."""
MAX_ATTEMPTS = 5
BACKOFF_S = 0.02
"""First pause between tries after a transient abort; doubles each time."""
MAX_CONFLICT_ATTEMPTS = 3
"""Tries of a work whose unique-key race is resolved by running it again."""

_SQLITE_WRITE_LOCKS: weakref.WeakKeyDictionary[sa.Engine, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_SQLITE_WRITE_LOCKS_GUARD = threading.Lock()


def is_transient(exc: sa.exc.OperationalError) -> bool:
    """Whether a fresh try of the same transaction can succeed."""
    if getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def write_lock(engine: sa.Engine) -> t.ContextManager[object]:
    """The process-wide writer queue of a SQLite engine (a no-op on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _SQLITE_WRITE_LOCKS_GUARD:
        lock = _SQLITE_WRITE_LOCKS.get(engine)
        if lock is None:
            lock = _SQLITE_WRITE_LOCKS[engine] = threading.Lock()
    return lock


def in_transaction(
    engine: sa.Engine,
    work: Callable[[sa.Connection], T],
    *,
    action: str = "transaction",
    retry_conflicts: bool = False,
) -> T:
    """Run ``work(conn)`` in one write transaction, up to :data:`MAX_ATTEMPTS` times."""
    conflicts = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with write_lock(engine), engine.begin() as conn:
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
