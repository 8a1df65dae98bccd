"""The one place that branches on the database dialect for INSERT ... ON CONFLICT."""

from __future__ import annotations

import typing as t
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.cache_key import CacheKey

_STATEMENTS: dict[tuple[str, str], t.Any] = {}


def insert(conn: sa.Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_update``/``_do_nothing`` on this connection."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def cached_statement(conn: sa.Connection, name: str, build: Callable[[], t.Any]) -> t.Any:
    """One statement per (name, dialect), built once and compiled once.

    SQLAlchemy gives ``INSERT .. ON CONFLICT DO UPDATE`` no cache key, so it would compile the
    statement again on every call (about a third of a sender's recording time). A statement
    built here must take every value from the executed rows (no literals), so a fixed key per
    name is exact. This sets SQLAlchemy's private ``_generate_cache_key``; if a future version
    stops calling it, the statement is merely compiled each time again.
    """
    key = (name, conn.dialect.name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = build()
        fixed = CacheKey((__name__, name), [])
        stmt._generate_cache_key = lambda: fixed
        _STATEMENTS[key] = stmt
    return stmt
