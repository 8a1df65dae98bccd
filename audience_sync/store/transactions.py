"""Run a unit of work in one transaction, again when the database aborted it for a reason that
a second try fixes: a PostgreSQL deadlock or serialization failure between concurrent senders
and the intake, or SQLite's writer lock held past the busy timeout."""

from __future__ import annotations

import logging
import time
import typing as t
from collections.abc import Callable

import sqlalchemy as sa

logger = logging.getLogger(__name__)

T = t.TypeVar("T")

TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected."""
MAX_ATTEMPTS = 5
BACKOFF_S = 0.02
"""First pause between tries; doubles each time (the other transaction is finishing)."""


def is_transient(exc: sa.exc.OperationalError) -> bool:
    """Whether a fresh try of the same transaction can succeed."""
    if getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(exc.orig)


def in_transaction(
    engine: sa.Engine, work: Callable[[sa.Connection], T], *, action: str = "transaction"
) -> T:
    """Run ``work(conn)`` in one transaction, up to :data:`MAX_ATTEMPTS` times."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.OperationalError as exc:
            if not is_transient(exc) or attempt == MAX_ATTEMPTS:
                raise
            logger.info(
                "transaction aborted by the database (attempt %d), running it again",
                attempt,
                extra={"action": "db_retry", "during": action, "attempt": attempt},
            )
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # pragma: no cover
