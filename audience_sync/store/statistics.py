"""Planner statistics on PostgreSQL: ``ANALYZE`` of the tables the senders read, after bulk loads.

A fresh deployment's first big import (or the benchmark's seed) leaves PostgreSQL with no
statistics for the outbox until autovacuum gets to it; meanwhile the planner scans and sorts the
whole table on every claim (2,500 users/s instead of 10,000 in the benchmark). SQLite needs
nothing: its planner uses the indexes without statistics.
"""

from __future__ import annotations

import sqlalchemy as sa

HOT_TABLES = ("outbox", "users", "memberships", "braze_users")


def analyze(engine: sa.Engine) -> bool:
    """``ANALYZE`` the hot tables (PostgreSQL only; sampled, so cheap); True if it ran."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE " + ", ".join(HOT_TABLES))
        conn.commit()
    return True
