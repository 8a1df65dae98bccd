"""SQLite only: move WAL pages into the database file from a background thread.

By default SQLite checkpoints inside whichever commit pushes the WAL past
``wal_autocheckpoint`` pages, so about one Firehose request in ten paid 40-65 ms for it. In
``run``/``serve``/``worker`` the request and sender connections instead keep only a high safety
limit (:data:`SAFETY_AUTOCHECKPOINT_PAGES`, should this thread ever stop), and this thread runs a
PASSIVE checkpoint every :data:`INTERVAL_S`: it never blocks a writer or a reader.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

import sqlalchemy as sa

logger = logging.getLogger(__name__)

INTERVAL_S = 0.05
"""Seconds between background checkpoints."""
SAFETY_AUTOCHECKPOINT_PAGES = 10_000
"""~40 MB of WAL: past this a commit checkpoints by itself (the thread fell behind), as
without the thread; a higher limit lets one unlucky commit checkpoint a huge WAL."""


class WalCheckpointer:
    """A daemon thread that checkpoints an SQLite engine's WAL until ``stop`` is set."""

    def __init__(self, engine: sa.Engine, stop: threading.Event) -> None:
        self.engine = engine
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)

    def start(self) -> WalCheckpointer:
        """Start checkpointing."""
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end after ``stop`` is set."""
        self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stop.wait(INTERVAL_S):
            try:
                # On the raw driver connection, outside any transaction: through SQLAlchemy
                # the statement would run inside BEGIN IMMEDIATE (store/engine.py), holding
                # the write lock and unable to finish the checkpoint.
                raw = self.engine.raw_connection()
                try:
                    raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").close()
                finally:
                    raw.close()
            except (sa.exc.SQLAlchemyError, sqlite3.Error) as exc:
                logger.warning(
                    "WAL checkpoint failed; retrying",
                    extra={"action": "wal_checkpoint_failed", "error": type(exc).__name__},
                )
