"""The heartbeat of a sending process (SPEC §9): registry, prompt recovery, shared budgets.

One thread per process that runs senders:

- at start it registers the process in the worker registry (:mod:`audience_sync.store.workers`);
  on SQLite, where this is the only sending process (SPEC §9), it then releases every lease of
  the database at once, so what a killed predecessor held is sent again at once (unless another
  registered process on this machine is still running: then its leases are kept);
- every ``delivery.heartbeat_s`` it beats, reaps the workers whose heartbeat is older than
  ``delivery.worker_timeout_s`` (cutting their leases short, so their users are sent again
  within seconds instead of after ``delivery.lease_s``), and divides the rate budget of every
  REST key by the number of live sending processes;
- on a clean stop it removes its row.

Losing the database for a while only delays beats: a process that is reaped while alive finds
out at its next beat and registers again; its senders lose nothing in flight (see
:mod:`audience_sync.store.workers`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from audience_sync.braze.ratelimit import RateBudget
from audience_sync.settings import Settings
from audience_sync.store import workers
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)


def _is_alive(worker: workers.Worker) -> bool:
    """Whether a registered process still runs: checked by pid on this machine (SQLite is one
    machine); a process elsewhere counts as alive."""
    if worker.hostname != socket.gethostname():
        return True
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_worker_id() -> str:
    """Unique per process start, readable in the outbox's ``claimed_by`` column."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Registers this process, keeps it alive in the registry and reaps the dead."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: Settings,
        worker_id: str,
        senders: int,
        budget: RateBudget,
        stop: threading.Event,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.senders = senders
        self.budget = budget
        self.stop = stop
        self.clock = clock
        self.interval_s: float = settings.get("delivery.heartbeat_s")
        self.timeout_s: float = settings.get("delivery.worker_timeout_s")
        self.lease_s: float = settings.get("delivery.lease_s")
        self.request_timeout_s: float = settings.get("braze.timeout_s")
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    @property
    def sender_ids(self) -> list[str]:
        """The ``worker_id`` of each sender of this process."""
        return workers.sender_ids(self.worker_id, self.senders)

    def start(self) -> Heartbeat:
        """Register (cutting a predecessor's leases on SQLite), reap, take this process's share
        of the budgets, and beat from a background thread. :attr:`ready` is set when the
        senders may start: at once when no other process sends; otherwise after one heartbeat
        period, so each of the others has lowered its share before this one adds to the
        rate."""
        now = self.clock()

        def register(conn: sa.Connection) -> int:
            workers.register(
                conn,
                worker_id=self.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                senders=self.senders,
                now=now,
            )
            if conn.dialect.name != "sqlite":
                return 0
            alive = [w for w in workers.others(conn, worker_id=self.worker_id) if _is_alive(w)]
            if alive:
                logger.warning(
                    "another process sends on this SQLite database; its leases are kept",
                    extra={"action": "worker_not_alone", "workers": len(alive)},
                )
                return 0
            return workers.take_over(conn, worker_id=self.worker_id)

        released = in_transaction(self.engine, register, action="worker_register")
        logger.info(
            "worker registered",
            extra={
                "action": "worker_registered",
                "worker": self.worker_id,
                "leases_released": released,
            },
        )
        others = self._beat_and_reap() - 1
        self._thread.start()
        if others > 0:
            timer = threading.Timer(self.interval_s * 1.5, self.ready.set)
            timer.daemon = True
            timer.start()
        else:
            self.ready.set()
        return self

    def wait_ready(self) -> bool:
        """Block until the senders may start; False if asked to stop first."""
        while not self.ready.wait(0.1):
            if self.stop.is_set():
                return False
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the beat thread (after ``stop``) and leave the registry."""
        self._thread.join(timeout)
        try:
            in_transaction(
                self.engine,
                lambda conn: workers.unregister(conn, worker_id=self.worker_id),
                action="worker_unregister",
            )
        except sa.exc.SQLAlchemyError:
            logger.warning(
                "could not leave the worker registry; the row will be reaped",
                extra={"action": "worker_unregister_failed", "worker": self.worker_id},
            )

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self._beat_and_reap()
            except Exception:
                # Beats resume when the database is back; a long gap only gets this process
                # reaped, which it notices at its next beat.
                logger.warning(
                    "heartbeat failed",
                    exc_info=True,
                    extra={"action": "worker_heartbeat_failed", "worker": self.worker_id},
                )

    def _beat_and_reap(self) -> int:
        """One beat; returns the number of live sending processes, this one included."""
        now = self.clock()

        def beat(conn: sa.Connection) -> tuple[bool, workers.Reaped, int]:
            alive = workers.beat(conn, worker_id=self.worker_id, now=now)
            if not alive:
                workers.register(
                    conn,
                    worker_id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    senders=self.senders,
                    now=now,
                )
            reaped = workers.reap_stale(
                conn,
                now=now,
                timeout_s=self.timeout_s,
                lease_s=self.lease_s,
                request_timeout_s=self.request_timeout_s,
            )
            live = workers.live_count(conn, now=now, timeout_s=self.timeout_s)
            return alive, reaped, live

        alive, reaped, live = in_transaction(self.engine, beat, action="worker_heartbeat")
        if not alive:
            logger.warning(
                "this worker had been reaped as stale; registered again",
                extra={"action": "worker_reregistered", "worker": self.worker_id},
            )
        if reaped.workers:
            logger.warning(
                "reaped workers whose heartbeat stopped; their users are sent again",
                extra={
                    "action": "worker_reaped",
                    "workers": reaped.workers,
                    "leases_cut": reaped.leases,
                },
            )
        self.budget.share_with(live)
        return live
