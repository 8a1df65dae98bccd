"""The background WAL checkpointer keeps request commits free of checkpoint work (SQLite)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from audience_sync.store.checkpoint import WalCheckpointer
from audience_sync.store.engine import create_engine
from audience_sync.store.schema import firehose_messages


def _write_in_bursts(engine, bursts: int) -> None:
    """Bursts of commits with pauses, as requests arrive."""
    for b in range(bursts):
        for i in range(5):
            with engine.begin() as conn:
                conn.execute(
                    firehose_messages.insert(),
                    [{"id": f"{b}-{i}-{j}", "type": "t", "received_at": 0} for j in range(300)],
                )
        time.sleep(0.15)


def _wal_bytes(url: str) -> int:
    return Path(url.removeprefix("sqlite:///") + "-wal").stat().st_size


def test_the_thread_keeps_the_wal_small_so_commits_never_checkpoint(tmp_path):
    from audience_sync.store.migrate import upgrade

    sizes = {}
    for with_thread in (False, True):
        url = f"sqlite:///{tmp_path}/{with_thread}.db"
        engine = create_engine(url, background_checkpoint=True)
        upgrade(engine)
        stop = threading.Event()
        checkpointer = WalCheckpointer(engine, stop).start() if with_thread else None
        try:
            _write_in_bursts(engine, 8)
            sizes[with_thread] = _wal_bytes(url)
        finally:
            stop.set()
            if checkpointer:
                checkpointer.join(5)
            engine.dispose()
    # Without the thread every commit appends to the WAL (below the safety limit nothing
    # checkpoints it); with it, the WAL is backfilled between bursts and rewound.
    assert sizes[True] * 3 < sizes[False], sizes


def test_sqlite_connections_zero_deleted_rows_without_extra_writes(sqlite_url: str) -> None:
    """secure_delete=FAST (2): whatever the SQLite build's default, deleted content is zeroed
    in the pages a delete writes, and freed pages are not written again to zero them."""
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 2
    finally:
        engine.dispose()
