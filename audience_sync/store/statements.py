"""Bulk statements: the one place that branches on the dialect for INSERT ... ON CONFLICT, the
one statement cache, and :func:`executemany`, the fast path for inserting many rows.

One cache holds each named statement per dialect: built once (with a fixed SQLAlchemy cache
key, so it is compiled once by ``conn.execute``), and, for :func:`executemany`, compiled once
to driver SQL.
"""

from __future__ import annotations

import itertools
import operator
import typing as t
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.cache_key import CacheKey

SQLITE_MAX_VARIABLES = 32766
"""Bound parameters per statement SQLite accepts by default (since 3.32)."""
IN_CHUNK = 500
"""Values per ``IN (...)`` list, well under SQLite's bound-parameter limit."""


def insert(conn: sa.Connection, table: sa.Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_update``/``_do_nothing`` on this connection."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(values: Sequence[t.Any], size: int = IN_CHUNK) -> Iterable[Sequence[t.Any]]:
    """``values`` in slices of at most ``size`` (for ``IN`` lists)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    columns: tuple[str, ...]  # in the order the statement binds them
    constants: tuple[t.Any, ...]  # values of the other parameters (ON CONFLICT ... SET)
    constant_names: dict[str, t.Any]
    positions: tuple[str, ...]  # every parameter, for positional paramstyles
    # SQLite multi-row form: "INSERT ... VALUES " + groups + " ON CONFLICT ..."
    head: str | None = None
    group: str | None = None
    tail: str | None = None


@dataclass
class _Entry:
    statement: t.Any
    compiled: _Compiled | None = None


_CACHE: dict[tuple[str, str], _Entry] = {}
"""(dialect, name) -> the statement, and its driver SQL once :func:`executemany` needed it."""


def _entry(conn: sa.Connection, name: str, build: Callable[[], t.Any]) -> _Entry:
    key = (conn.dialect.name, name)
    entry = _CACHE.get(key)
    if entry is None:
        stmt = build()
        fixed = CacheKey((__name__, name), [])
        stmt._generate_cache_key = lambda: fixed
        entry = _CACHE[key] = _Entry(statement=stmt)
    return entry


def cached_statement(conn: sa.Connection, name: str, build: Callable[[], t.Any]) -> t.Any:
    """One statement per (name, dialect), built once and compiled once.

    SQLAlchemy gives ``INSERT .. ON CONFLICT DO UPDATE`` no cache key, so it would compile the
    statement again on every call (about a third of a sender's recording time). A statement
    built here must take every value from the executed rows (no literals), so a fixed key per
    name is exact. This sets SQLAlchemy's private ``_generate_cache_key``; if a future version
    stops calling it, the statement is merely compiled each time again.
    """
    return _entry(conn, name, build).statement


def _compile(
    conn: sa.Connection, name: str, build: Callable[[], t.Any], columns: list[str]
) -> _Compiled:
    entry = _entry(conn, name, build)
    if entry.compiled is not None:
        return entry.compiled
    statement = entry.statement.compile(dialect=conn.dialect, column_keys=columns)
    sql = str(statement)
    constant_names = {k: v for k, v in statement.params.items() if k not in columns}
    positions = tuple(statement.positiontup or ())
    bound_columns = tuple(p for p in positions if p in columns) or tuple(columns)
    head = group = tail = None
    if positions:
        start = sql.find(" VALUES (")
        end = sql.find(")", start) + 1
        expected = "(" + ", ".join(["?"] * len(columns)) + ")"
        if start >= 0 and sql[start + len(" VALUES ") : end] == expected:
            head, group, tail = sql[: start + len(" VALUES ")], expected, sql[end:]
            assert positions[: len(columns)] == bound_columns
    entry.compiled = _Compiled(
        sql=sql,
        columns=bound_columns,
        constants=tuple(constant_names[p] for p in positions if p not in columns),
        constant_names=constant_names,
        positions=positions,
        head=head,
        group=group,
        tail=tail,
    )
    return entry.compiled


def executemany(
    conn: sa.Connection,
    name: str,
    build: Callable[[], t.Any],
    columns: tuple[str, ...],
    rows: list[tuple[t.Any, ...]],
) -> None:
    """Insert many rows with an INSERT built by ``build`` (cached per dialect under ``name``),
    without SQLAlchemy's per-row parameter processing, which took a third of a 500-profile
    request. Rows are tuples of the values of ``columns`` (every column the statement inserts,
    always the same for one ``name``), with JSON values already encoded as text.

    On SQLite the rows go as multi-row ``VALUES`` lists: ``executemany`` releases and retakes
    the GIL around every row, and with other request threads busy in Python each retake waits
    for a switch interval; that convoy, not SQLite, was what limited throughput.
    """
    if not rows:
        return
    compiled = _compile(conn, name, build, list(columns))
    if compiled.columns != columns:
        index = [columns.index(c) for c in compiled.columns]
        rows = [tuple([row[i] for i in index]) for row in rows]
    if compiled.head is not None and compiled.group is not None and compiled.tail is not None:
        width = len(compiled.columns)
        per_statement = max(1, (SQLITE_MAX_VARIABLES - len(compiled.constants)) // width)
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            values = list(itertools.chain.from_iterable(chunk))
            values.extend(compiled.constants)
            groups = ", ".join([compiled.group] * len(chunk))
            conn.exec_driver_sql(compiled.head + groups + compiled.tail, tuple(values))
        return
    names = compiled.columns
    dict_rows = [{**compiled.constant_names, **dict(zip(names, row, strict=True))} for row in rows]
    if compiled.positions:
        every = operator.itemgetter(*compiled.positions, compiled.positions[0])
        conn.exec_driver_sql(compiled.sql, [every(row)[:-1] for row in dict_rows])
    else:
        conn.exec_driver_sql(compiled.sql, dict_rows)
