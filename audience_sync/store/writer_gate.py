"""The SQLite writer gate: one writer at a time per database file, a waiting intake first.

Within a process, :class:`PriorityLock` queues the writers: when it is released, a waiting
priority writer (the Firehose intake) takes it before any waiting sender. Across processes
(``audience-sync run`` sends from a child process), the holder of that lock then takes two
``flock`` files next to the database:

- ``<db>-intake.lock``: a priority writer holds it *shared* while it waits for the writer
  lock; a sender takes it *exclusive* for an instant before waiting, so it queues behind every
  announced intake writer of every process;
- ``<db>-writer.lock``: held exclusive for the transaction.

A sender that read the announcement just before an intake writer made it goes first; the intake
then waits one sender transaction at most (senders keep theirs short). ``flock`` locks go with
the process: a SIGKILLed holder releases them at once. An in-memory database has no other
process and only the in-process lock. PostgreSQL needs no gate (row locks; no single writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import typing as t
import weakref
from collections.abc import Iterator

import sqlalchemy as sa


class PriorityLock:
    """A mutex whose waiting priority holders go before its waiting ordinary holders."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._held = False
        self._priority_waiting = 0

    def acquire(self, *, priority: bool) -> None:
        """Block until this thread holds the lock."""
        with self._cond:
            if priority:
                self._priority_waiting += 1
                try:
                    while self._held:
                        self._cond.wait()
                finally:
                    self._priority_waiting -= 1
            else:
                while self._held or self._priority_waiting:
                    self._cond.wait()
            self._held = True

    def release(self) -> None:
        """Let the next holder in (a priority one first)."""
        with self._cond:
            self._held = False
            self._cond.notify_all()


class _FileLocks:
    """The two lock files of one database (opened once per process; only the holder of the
    process's :class:`PriorityLock` uses them)."""

    def __init__(self, database: str) -> None:
        self.intake = os.open(database + "-intake.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.writer = os.open(database + "-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self.pid = os.getpid()

    def acquire(self, *, priority: bool) -> None:
        if priority:
            fcntl.flock(self.intake, fcntl.LOCK_SH)
            try:
                fcntl.flock(self.writer, fcntl.LOCK_EX)
            finally:
                fcntl.flock(self.intake, fcntl.LOCK_UN)
        else:
            fcntl.flock(self.intake, fcntl.LOCK_EX)
            fcntl.flock(self.intake, fcntl.LOCK_UN)
            fcntl.flock(self.writer, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.writer, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.intake)
        os.close(self.writer)


class _Gate:
    def __init__(self, database: str | None) -> None:
        self.lock = PriorityLock()
        self.database = database
        self._files: _FileLocks | None = None

    def files(self) -> _FileLocks | None:
        """The lock files, reopened after a fork (a child must not share its parent's)."""
        if self.database is None:
            return None
        if self._files is None or self._files.pid != os.getpid():
            self._files = _FileLocks(self.database)
        return self._files

    @contextlib.contextmanager
    def hold(self, *, priority: bool) -> Iterator[None]:
        self.lock.acquire(priority=priority)
        try:
            files = self.files()
            if files is None:
                yield
                return
            files.acquire(priority=priority)
            try:
                yield
            finally:
                files.release()
        finally:
            self.lock.release()


_GATES: weakref.WeakKeyDictionary[sa.Engine, _Gate] = weakref.WeakKeyDictionary()
_GATES_GUARD = threading.Lock()


def _database_file(engine: sa.Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def writer_gate(engine: sa.Engine, *, priority: bool = False) -> t.ContextManager[None]:
    """Hold the database's writer gate for one write transaction (a no-op on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _GATES_GUARD:
        gate = _GATES.get(engine)
        if gate is None:
            gate = _GATES[engine] = _Gate(_database_file(engine))
    return gate.hold(priority=priority)
