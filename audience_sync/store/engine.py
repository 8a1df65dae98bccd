"""Create the SQLAlchemy engine with the settings each backend needs (SPEC §9)."""

from __future__ import annotations

from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from audience_sync.store.checkpoint import SAFETY_AUTOCHECKPOINT_PAGES


def _json_dumps(value: object) -> str:
    # Keys may be StrEnums (counts by reason), as the stdlib's json accepted.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns are encoded and decoded with orjson: read on every snapshot, written on every
# record (the stdlib's json was a tenth of the sender's CPU).
JSON_OPTIONS = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}

READ_ONLY = "read_only"
"""Execution option: this connection only reads (SQLite then takes no write lock)."""


def create_engine(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    pool_size: int = 10,
    background_checkpoint: bool = False,
) -> sa.Engine:
    """Return an engine for ``url``.

    ``background_checkpoint``: the caller runs a :class:`~audience_sync.store.checkpoint.
    WalCheckpointer` (long-running processes), so commits need not checkpoint the WAL.

    SQLite runs in WAL mode so readers never block the writer; ``synchronous=NORMAL`` in WAL
    mode survives a killed process (only an OS crash can lose the last transactions; choose
    ``FULL`` for that). A busy timeout lets the HTTP server and the sender share the file.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size,
            **JSON_OPTIONS,
        )
        sync = sqlite_synchronous.upper()
        autocheckpoint = SAFETY_AUTOCHECKPOINT_PAGES

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # pysqlite's own transaction handling is replaced by explicit BEGIN below, so
            # that BEGIN IMMEDIATE takes the write lock up front (no deadlocking upgrades).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sync}")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Checkpoint every ~40 MB of WAL instead of every 4 MB: fewer syncs under load; with
            # a background checkpointer (store/checkpoint.py) commits only keep a safety limit.
            cursor.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
            cursor.execute("PRAGMA cache_size=-16384")  # 16 MiB per connection
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Readers (execution option read_only=True) take no lock: WAL lets them run
            # beside the writer. Writers lock at BEGIN so two never deadlock upgrading.
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **JSON_OPTIONS
        )
    raise ValueError(f"unsupported database URL scheme: {parsed.get_backend_name()}")


def read_only(engine: sa.Engine) -> sa.Connection:
    """A connection for reads only: ``with read_only(engine) as conn: ...``."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def is_postgresql(engine: sa.Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL (row locking and SKIP LOCKED available)."""
    return engine.dialect.name == "postgresql"
