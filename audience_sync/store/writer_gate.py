"""The SQLite writer gate: one writer at a time per database file, a waiting intake first.

Within a process, :class:`PriorityLock` queues the writers: when it is released, a waiting
priority writer (the Firehose intake) takes it before any waiting sender. Across processes
(``audience-sync run`` sends from a child process), the holder of that lock then takes two
``flock`` files next to the database:

- ``<db>-intake.lock``: held *shared* by a process while any of its priority writers waits or
  writes; a sender takes it *exclusive* for an instant before queueing, so it waits while an
  intake writer of any process is waiting;
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
    """A mutex whose waiting priority holders go before its waiting ordinary holders.

    A release wakes one waiter, of the class that goes next: waking every waiter made each
    sender thread take the GIL, find the lock taken and wait again, at every transaction."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._guard = lock
        self._priority = threading.Condition(lock)
        self._ordinary = threading.Condition(lock)
        self._held = False
        self._priority_waiting = 0

    def acquire(self, *, priority: bool) -> None:
        """Block until this thread holds the lock."""
        with self._guard:
            if priority:
                self._priority_waiting += 1
                try:
                    while self._held:
                        self._priority.wait()
                except BaseException:
                    # The wake-up meant for this waiter goes to the next one.
                    self._priority_waiting -= 1
                    self._wake_next()
                    raise
                self._priority_waiting -= 1
            else:
                try:
                    while self._held or self._priority_waiting:
                        self._ordinary.wait()
                except BaseException:
                    self._wake_next()
                    raise
            self._held = True

    @property
    def priority_waiting(self) -> bool:
        """Whether a priority holder waits now."""
        return self._priority_waiting > 0

    def release(self) -> None:
        """Let the next holder in (a priority one first)."""
        with self._guard:
            self._held = False
            self._wake_next()

    def _wake_next(self) -> None:
        if self._held:
            return
        if self._priority_waiting:
            self._priority.notify()
        else:
            self._ordinary.notify()


class _FileLocks:
    """The lock files of one database, opened once per process. The intake file is opened twice:
    one descriptor announces this process's waiting priority writers (held shared while any
    waits), the other is the senders' check (``flock`` conflicts between descriptors even in one
    process, never on one)."""

    def __init__(self, database: str) -> None:
        flags = os.O_RDWR | os.O_CREAT
        self.announce = os.open(database + "-intake.lock", flags, 0o600)
        self.check = os.open(database + "-intake.lock", flags, 0o600)
        self.writer = os.open(database + "-writer.lock", flags, 0o600)
        self.pid = os.getpid()
        self._guard = threading.Lock()
        self._waiting = 0

    def announce_start(self) -> None:
        """A priority writer of this process waits: senders everywhere hold back."""
        with self._guard:
            self._waiting += 1
            if self._waiting == 1:
                fcntl.flock(self.announce, fcntl.LOCK_SH)

    def announce_end(self) -> None:
        with self._guard:
            self._waiting -= 1
            if self._waiting == 0:
                fcntl.flock(self.announce, fcntl.LOCK_UN)

    def priority_writer_waiting(self) -> bool:
        """Whether a priority writer of any process (this one included) waits now."""
        try:
            fcntl.flock(self.check, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.check, fcntl.LOCK_UN)
        return False

    def wait_for_priority_writers(self) -> None:
        """Block while a priority writer of any process waits (before taking anything else:
        the announcing writer may be waiting for this process's lock)."""
        fcntl.flock(self.check, fcntl.LOCK_EX)
        fcntl.flock(self.check, fcntl.LOCK_UN)


class _Gate:
    def __init__(self, database: str | None) -> None:
        self.lock = PriorityLock()
        self.database = database
        self._files: _FileLocks | None = None
        self._opening = threading.Lock()

    def files(self) -> _FileLocks | None:
        """The lock files, reopened after a fork (a child must not share its parent's)."""
        if self.database is None:
            return None
        with self._opening:
            if self._files is None or self._files.pid != os.getpid():
                self._files = _FileLocks(self.database)
            return self._files

    @contextlib.contextmanager
    def hold(self, *, priority: bool) -> Iterator[None]:
        files = self.files()
        if files is None:
            self.lock.acquire(priority=priority)
            try:
                yield
            finally:
                self.lock.release()
            return
        if priority:
            files.announce_start()
        else:
            files.wait_for_priority_writers()
        try:
            self.lock.acquire(priority=priority)
            try:
                fcntl.flock(files.writer, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(files.writer, fcntl.LOCK_UN)
            finally:
                self.lock.release()
        finally:
            if priority:
                files.announce_end()


_GATES: weakref.WeakKeyDictionary[sa.Engine, _Gate] = weakref.WeakKeyDictionary()
_GATES_GUARD = threading.Lock()


def _database_file(engine: sa.Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _gate(engine: sa.Engine) -> _Gate:
    with _GATES_GUARD:
        gate = _GATES.get(engine)
        if gate is None:
            gate = _GATES[engine] = _Gate(_database_file(engine))
    return gate


def writer_gate(engine: sa.Engine, *, priority: bool = False) -> t.ContextManager[None]:
    """Hold the database's writer gate for one write transaction (a no-op on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    return _gate(engine).hold(priority=priority)


def priority_writer_waiting(engine: sa.Engine) -> bool:
    """Whether an intake writer waits for the gate now, in any process: a long writer holding
    it commits what it has done and lets it in (always False on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return False
    gate = _gate(engine)
    if gate.lock.priority_waiting:
        return True
    files = gate.files()
    return files is not None and files.priority_writer_waiting()
