"""The journal applier thread (SPEC §4.1): applies the Firehose journal in arrival order until
stopped (:func:`audience_sync.firehose.applier.apply_journal`), one entry that fails never
stopping the others. It runs in ``run``'s applier child process
(:mod:`audience_sync.sender_process`) or beside the senders of a ``worker``.
"""

from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa

from audience_sync.firehose.applier import (
    apply_journal,
    delete_ended,
    drain_main_database_journal,
)
from audience_sync.store import journal
from audience_sync.store.engine import read_only
from audience_sync.store.journal_file import journal_engine

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.05
"""Pause of an applier that found the journal empty."""
FAILED_RETRY_S = 30.0
"""Pause before an entry that failed alone is tried again."""
DELETE_INTERVAL_S = 1.0
"""How often the applier deletes the entries it ended from a journal file of its own: each
delete holds that file's write lock, which the intake needs, from a process at a lower CPU
priority (nice), so they are batched."""


class JournalApplier:
    """One thread applying the journal until ``stop`` is set. An entry that fails is tried
    alone; if it fails alone it is left in the journal (counted in ``status`` as waiting, logged
    with its error) and tried again every :data:`FAILED_RETRY_S`, and the others go on."""

    def __init__(self, engine: sa.Engine, *, coalesce_s: float, stop: threading.Event) -> None:
        self.engine = engine
        self.coalesce_s = coalesce_s
        self.stop = stop
        self.failed: dict[int, float] = {}  # seq -> when it may be tried again
        self.ended: set[int] = set()  # ended here, still in the journal file
        self._deleted_at = time.monotonic()
        self.thread = threading.Thread(target=self.run, name="firehose-applier", daemon=True)

    def start(self) -> JournalApplier:
        """Start the thread."""
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after ``stop``)."""
        self.thread.join(timeout)

    def run(self) -> None:
        """Apply until stopped; idle pauses are short, so an entry waits at most
        :data:`IDLE_POLL_S` plus the work before it."""
        try:
            drain_main_database_journal(self.engine, coalesce_s=self.coalesce_s)
        except Exception:  # left where it is; logged, and tried again at the next start
            logger.exception("applying the main database's Firehose journal table failed")
        while not self.stop.is_set():
            if self.run_once() == 0:
                self.stop.wait(IDLE_POLL_S)
        self._delete_ended(idle=True)

    def _delete_ended(self, *, idle: bool) -> None:
        """Delete what was ended from the journal file, every :data:`DELETE_INTERVAL_S` or
        when idle. A failure is logged; they stay excluded here and marked in the database."""
        now = time.monotonic()
        if not self.ended or (not idle and now - self._deleted_at < DELETE_INTERVAL_S):
            return
        try:
            delete_ended(self.engine, self.ended)
        except Exception:
            logger.exception("deleting applied entries from the Firehose journal failed")
            return
        self.ended.clear()
        self._deleted_at = now

    def run_once(self) -> int:
        """One transaction's worth of entries; errors are logged, never raised."""
        applied = self._apply_round()
        self._delete_ended(idle=applied == 0)
        return applied

    def _apply_round(self) -> int:
        now = time.time()
        exclude = frozenset(
            {seq for seq, retry_at in self.failed.items() if retry_at > now} | self.ended
        )
        try:
            return apply_journal(
                self.engine, coalesce_s=self.coalesce_s, exclude=exclude, ended=self.ended
            )
        except Exception:
            logger.exception("applying the Firehose journal failed; trying entries alone")
        return self._apply_alone(exclude)

    def _apply_alone(self, exclude: frozenset[int]) -> int:
        try:
            with read_only(journal_engine(self.engine)) as conn:
                entries = journal.oldest(conn, max_profiles=1, exclude=exclude)
        except Exception:
            logger.exception("reading the Firehose journal failed")
            return 0
        if not entries:
            return 0
        seq = entries[0].seq
        try:
            applied = apply_journal(
                self.engine, coalesce_s=self.coalesce_s, max_profiles=1, exclude=exclude
            )
        except Exception as exc:
            self.failed[seq] = time.time() + FAILED_RETRY_S
            logger.error(
                "Firehose journal entry %d could not be applied (%s); the others go on",
                seq,
                type(exc).__name__,
                extra={"action": "firehose_apply_failed", "seq": seq, "error": str(exc)[:500]},
            )
            return 0
        self.failed.pop(seq, None)
        return applied
