"""Planner statistics on PostgreSQL: ``ANALYZE`` of the tables the senders read, after bulk loads.

A fresh deployment's first big import (or the benchmark's seed) leaves PostgreSQL with no
statistics for the outbox until autovacuum gets to it; meanwhile the planner scans and sorts the
whole table on every claim (2,500 users/s instead of 10,000 in the benchmark). SQLite needs
nothing: its planner uses the indexes without statistics.

Every sender asks for it at its first work and then every few minutes, so at start-up 4 senders
in each of N processes asked at once: each ``ANALYZE`` of the hot tables cost the database
0.65 s of CPU, 5 s of the two cores' first seconds in the 2-worker benchmark. One asker runs it
(a transaction-scoped advisory lock; the others skip), and only when a hot table was not
analyzed (by anyone, autovacuum included) within ``max_age_s``.
"""

from __future__ import annotations

import sqlalchemy as sa

HOT_TABLES = ("outbox", "users", "memberships", "braze_users")
ADVISORY_LOCK_KEY = 0x4155_4453_414E  # "AUDSAN": one key for this statement only


def analyze(engine: sa.Engine, *, max_age_s: float = 0.0) -> bool:
    """``ANALYZE`` the hot tables (PostgreSQL only; sampled, so cheap); True if it ran.

    With ``max_age_s``: skipped when every hot table was analyzed within that many seconds, or
    when another process is analyzing them right now."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        if max_age_s > 0:
            got = conn.exec_driver_sql(
                "SELECT pg_try_advisory_xact_lock(%(key)s)", {"key": ADVISORY_LOCK_KEY}
            ).scalar_one()
            if not got or not _stale(conn, max_age_s):
                conn.rollback()
                return False
        conn.exec_driver_sql("ANALYZE " + ", ".join(HOT_TABLES))
        conn.commit()
    return True


def _stale(conn: sa.Connection, max_age_s: float) -> bool:
    """Whether a hot table has no statistics younger than ``max_age_s`` (database clock)."""
    fresh = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_stat_user_tables WHERE relname = ANY(%(tables)s) "
        "AND greatest(last_analyze, last_autoanalyze) "
        ">= now() - make_interval(secs => %(age)s)",
        {"tables": list(HOT_TABLES), "age": max_age_s},
    ).scalar_one()
    return int(fresh) < len(HOT_TABLES)
