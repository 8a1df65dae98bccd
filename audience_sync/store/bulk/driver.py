"""Hand-written statements straight on the DBAPI cursor, rows as the driver's tuples.

``Connection.exec_driver_sql`` still builds a SQLAlchemy result and a ``Row`` per row; on the
sender's hot path (hundreds of rows per batch) that wrapping cost more than SQLite's own work.
The statement runs on the connection's own DBAPI connection, so inside its transaction; a
driver error is raised as SQLAlchemy's (``sa.exc.OperationalError`` for a locked database...),
which the transaction runner and the sender loop handle.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

_IDLE = 0
"""psycopg's ``pq.TransactionStatus.IDLE``: connected, outside a transaction (psycopg is
imported only where PostgreSQL is used)."""


def _run(conn: sa.Connection, sql: str, params: t.Any, *, rows: bool) -> list[tuple[t.Any, ...]]:
    if not conn.in_transaction():
        # Begun as SQLAlchemy would (on SQLite the engine's BEGIN, so reads see one snapshot).
        conn.begin()
    if conn.dialect.name == "postgresql" and _starts_transaction(conn):
        # psycopg sends the BEGIN of a transaction's first statement as a round trip of its
        # own, except in pipeline mode: there both go in one.
        if rows:
            return fetch_each(conn, [(sql, params)])[0]
        _pipelined(conn, sql, params, commit=False)
        return []
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall() if rows else []
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi_error) from exc
    finally:
        cursor.close()


def _starts_transaction(conn: sa.Connection) -> bool:
    """PostgreSQL: whether the next statement on ``conn`` begins the database transaction."""
    raw = conn.connection.dbapi_connection
    return raw is not None and raw.info.transaction_status == _IDLE


def _pipelined(conn: sa.Connection, sql: str, params: t.Any, *, commit: bool) -> None:
    """PostgreSQL: ``sql`` in pipeline mode, with the COMMIT when ``commit``: what psycopg has
    queued before it (a BEGIN) goes in the same round trip."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor()
    try:
        with raw.pipeline():
            cursor.execute(sql, params)
            if commit:
                raw.commit()
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(sql, params, exc, dbapi_error) from exc
    finally:
        cursor.close()


def fetch_all(conn: sa.Connection, sql: str, params: t.Any) -> list[tuple[t.Any, ...]]:
    """Run ``sql`` (the driver's paramstyle) with ``params`` in ``conn``'s transaction; every
    row as a tuple."""
    return _run(conn, sql, params, rows=True)


def execute(conn: sa.Connection, sql: str, params: t.Any) -> None:
    """:func:`fetch_all` for a statement that returns no rows."""
    _run(conn, sql, params, rows=False)


def fetch_each(
    conn: sa.Connection, statements: list[tuple[str, t.Any]]
) -> list[list[tuple[t.Any, ...]]]:
    """PostgreSQL: :func:`fetch_all` of several statements in one round trip (psycopg's
    pipeline mode: all are sent, then all results read); their rows, in order."""
    if not conn.in_transaction():
        conn.begin()
    dbapi_error = conn.dialect.loaded_dbapi.Error
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cursors = [raw.cursor() for _ in statements]
    try:
        with raw.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params)
        return [cursor.fetchall() for cursor in cursors]
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(str(statements), None, exc, dbapi_error) from exc
    finally:
        for cursor in cursors:
            cursor.close()


def execute_and_commit(conn: sa.Connection, sql: str, params: t.Any) -> None:
    """PostgreSQL: run ``sql`` and COMMIT the caller's transaction in one round trip (psycopg's
    pipeline mode), for the last statement of a transaction on rows that every writer updates.
    Their locks are then held until the COMMIT, which no longer waits for this process to get
    a CPU and the GIL back between the two. The caller's own commit afterwards finds no open
    transaction and sends nothing (psycopg's commit then does nothing); the caller must run no
    statement after this one."""
    if not conn.in_transaction():
        conn.begin()
    _pipelined(conn, sql, params, commit=True)
