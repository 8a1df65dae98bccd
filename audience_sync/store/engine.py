"""Create the SQLAlchemy engine with the settings each backend needs (SPEC §9)."""

from __future__ import annotations

import sqlite3
import time
from enum import StrEnum
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from audience_sync.core import states
from audience_sync.store.checkpoint import SAFETY_AUTOCHECKPOINT_PAGES


def _json_dumps(value: object) -> str:
    # Keys may be StrEnums (counts by reason), as the stdlib's json accepted.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns are encoded and decoded with orjson: read on every snapshot, written on every
# record (the stdlib's json was a tenth of the sender's CPU).
JSON_OPTIONS = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}


def _bind_subclasses_as_base_types() -> None:
    """pysqlite binds an exact int, float or str at once, but anything else (None, a bool, a
    state's StrEnum) only after looking for an adapter, and a failed lookup raises and formats
    an AttributeError per parameter (5 % of the journal applier's instructions). A registered
    adapter is one dict lookup, and binds the same value."""
    sqlite3.register_adapter(type(None), lambda _none: None)
    sqlite3.register_adapter(bool, int)
    for value in vars(states).values():
        if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum:
            sqlite3.register_adapter(value, str)


_bind_subclasses_as_base_types()

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
            # Deleted rows are zeroed in the pages a delete writes anyway, but freed pages are
            # not written again just to zero them (builds with SQLITE_SECURE_DELETE, such as
            # this machine's, default to ON: a sender's delete of delivered Currents batches
            # then wrote every freed page, ~25 % of its CPU; SQLite's own default is OFF).
            cursor.execute("PRAGMA secure_delete=FAST")
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
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={} if "options" in parsed.query else {"options": PG_SESSION_OPTIONS},
            **JSON_OPTIONS,
        )
        _ping_when_idle(engine)
        return engine
    raise ValueError(f"unsupported database URL scheme: {parsed.get_backend_name()}")


PG_SESSION_OPTIONS = "-c random_page_cost=1.1"
"""PostgreSQL settings of every session of the engine (unless the URL sets ``options``).

The hot statements look rows up by lists of up to a few hundred keys. With the default
``random_page_cost`` (4, for spinning disks) PostgreSQL costs those index lookups above a
scan of the whole table up to some 100,000 rows, and scanned ``memberships``, ``users``,
``braze_users`` and ``outbox`` in full for every batch of 300 users (5-30 ms each, growing
with the table); 1.1, its documentation's value for storage that is not spinning (or data in
memory), gives the index lookups (0.4-1 ms)."""

IDLE_PING_S = 1.0
"""A pooled PostgreSQL connection unused for longer than this is tested before it is handed
out (and replaced if the server closed it)."""


def _ping_when_idle(engine: sa.Engine) -> None:
    """``pool_pre_ping`` only for connections that sat idle: SQLAlchemy's pings at every
    checkout, one round trip more per transaction (a tenth of the Firehose intake's time
    under load, waiting for a busy server's backend). A connection in steady use is not pinged;
    should the server restart under load, the first statement on a stale one fails, and the
    pool then replaces all connections older than that failure (SQLAlchemy's disconnect
    handling), as after any failure of a running transaction."""

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy):  # type: ignore[no-untyped-def]
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)  # what pool_pre_ping runs
        except Exception as exc:
            raise sa.exc.DisconnectionError("idle connection failed its ping") from exc
        if not alive:
            raise sa.exc.DisconnectionError("idle connection failed its ping")


def autocommit(engine: sa.Engine) -> sa.Connection:
    """A connection whose every statement commits on its own (PostgreSQL): for a single
    statement that is a unit of work alone, which then needs neither BEGIN nor COMMIT."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def read_only(engine: sa.Engine) -> sa.Connection:
    """A connection for reads only: ``with read_only(engine) as conn: ...``."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def is_postgresql(engine: sa.Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL (row locking and SKIP LOCKED available)."""
    return engine.dialect.name == "postgresql"
