"""Planner statistics on PostgreSQL: ``ANALYZE`` of the tables the senders read, after bulk loads.

A fresh deployment's first big import (or the benchmark's seed) leaves PostgreSQL with no
statistics for the outbox until autovacuum gets to it; meanwhile the planner scans and sorts the
whole table on every claim (2,500 users/s instead of 10,000 in the benchmark). SQLite needs
nothing: its planner uses the indexes without statistics.

Every sender asks for it at its first work and then every few seconds, so at start-up 4
senders in each of N processes asked at once: each ``ANALYZE`` of the hot tables cost the
database 0.65 s of CPU, 5 s of the two cores' first seconds in the 2-worker benchmark. One asker
runs it (a transaction-scoped advisory lock; the others skip), and only for the hot tables that
need it: not analyzed (by anyone, autovacuum included) within ``max_age_s``, or changed by more
rows than they hold since (autovacuum's own trigger waits for its next round, a minute by
default: a ``braze_users`` analyzed empty at the start of a big delivery was planned as empty
for the whole of it, and its lookups scanned every row of the workspace).
"""

from __future__ import annotations

import sqlalchemy as sa

HOT_TABLES = ("outbox", "users", "memberships", "braze_users")
ADVISORY_LOCK_KEY = 0x4155_4453_414E  # "AUDSAN": one key for this statement only
CHANGED_ROWS_SLACK = 1000
"""Rows a table may change beyond its own size before its statistics are refreshed."""


def analyze(engine: sa.Engine, *, max_age_s: float = 0.0) -> bool:
    """``ANALYZE`` the hot tables (PostgreSQL only; sampled, so cheap); True if it ran.

    With ``max_age_s``: only those not analyzed within that many seconds or changed by more
    rows than they hold since; none while another process is analyzing them."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        tables: list[str] = list(HOT_TABLES)
        if max_age_s > 0:
            got = conn.exec_driver_sql(
                "SELECT pg_try_advisory_xact_lock(%(key)s)", {"key": ADVISORY_LOCK_KEY}
            ).scalar_one()
            tables = _stale(conn, max_age_s) if got else []
            if not tables:
                conn.rollback()
                return False
        conn.exec_driver_sql("ANALYZE " + ", ".join(tables))
        conn.commit()
    return True


def _stale(conn: sa.Connection, max_age_s: float) -> list[str]:
    """The hot tables whose statistics are older than ``max_age_s`` (database clock) or that
    changed by more rows than they held then (``reltuples``, what the planner believes)."""
    fresh = {
        name
        for (name,) in conn.exec_driver_sql(
            "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.relname = ANY(%(tables)s) AND s.schemaname = current_schema() "
            "AND greatest(s.last_analyze, s.last_autoanalyze) "
            ">= now() - make_interval(secs => %(age)s) "
            "AND s.n_mod_since_analyze <= %(slack)s + greatest(c.reltuples, 0)",
            {"tables": list(HOT_TABLES), "age": max_age_s, "slack": CHANGED_ROWS_SLACK},
        )
    }
    return [table for table in HOT_TABLES if table not in fresh]
