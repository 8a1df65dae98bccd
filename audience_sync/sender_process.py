"""``audience-sync run``'s senders in a child process, restarted when it dies.

One Python process is one core at most (the GIL): with the HTTP server and the senders in one
process, delivery and acknowledgements competed for it. ``run`` therefore starts its senders in
a child (``multiprocessing`` spawn, so the child starts clean of the parent's threads and
sockets) and keeps one command, one log (the child writes to the same stderr) and one SIGTERM:

- SIGTERM/SIGINT to the parent: it stops the child with SIGTERM (the child finishes its current
  batch) and waits for it (:data:`STOP_TIMEOUT_S`, then SIGKILL).
- The child dies (SIGKILL, a crash): the parent logs it and starts a new one after
  :data:`RESTART_PAUSE_S`. Leases of the dead child's users are cut short by the new child's
  start (the worker registry); until then they run out by themselves.
- The parent dies (SIGKILL): the child notices it is orphaned within a second and stops, so the
  restarted ``run`` is again the only sending process.

Both sides write through the same SQLite writer gate (:mod:`audience_sync.store.writer_gate`),
whose lock files make the intake go first across the two processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import typing as t
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType

from audience_sync.settings import Settings

logger = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
"""Pause before restarting a dead sender process (a child that dies at once does not spin)."""
STOP_TIMEOUT_S = 30.0
"""How long a stopping child may take to finish its batch before it is killed."""
ORPHAN_CHECK_S = 1.0


def _mapping_proxy(items: dict[t.Any, t.Any]) -> MappingProxyType[t.Any, t.Any]:
    return MappingProxyType(items)


def _reduce_mapping_proxy(proxy: MappingProxyType[t.Any, t.Any]) -> tuple[t.Any, ...]:
    return _mapping_proxy, (dict(proxy),)


# The settings go to the child as they are (read-only mappings included), not re-read from the
# environment: a child sends with exactly its parent's configuration.
ForkingPickler.register(MappingProxyType, _reduce_mapping_proxy)


class SenderProcess:
    """Supervises the sender child of ``run``: start, restart when it dies, stop."""

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self._context = multiprocessing.get_context("spawn")
        self._child: t.Any = None
        self._thread = threading.Thread(target=self._supervise, name="sender-process", daemon=True)
        self.restarts = 0

    def start(self) -> SenderProcess:
        """Start the child and the thread that restarts it."""
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        self._child = self._context.Process(
            target=child_main, args=(self.settings, os.getpid()), name="audience-sync-senders"
        )
        self._child.start()
        logger.info(
            "sender process started",
            extra={"action": "sender_process_started", "pid": self._child.pid},
        )

    def _supervise(self) -> None:
        while not self.stop.is_set():
            self._child.join(timeout=0.5)
            if self._child.is_alive() or self.stop.is_set():
                continue
            logger.warning(
                "sender process exited; starting a new one",
                extra={
                    "action": "sender_process_died",
                    "pid": self._child.pid,
                    "exit_code": self._child.exitcode,
                },
            )
            if self.stop.wait(RESTART_PAUSE_S):
                return
            self.restarts += 1
            self._spawn()

    def join(self, timeout: float | None = None) -> None:
        """Stop the child (``stop`` must be set): SIGTERM, wait, then SIGKILL."""
        self._thread.join(timeout=5)
        child = self._child
        if child is None or not child.is_alive():
            return
        child.terminate()
        child.join(STOP_TIMEOUT_S if timeout is None else timeout)
        if child.is_alive():
            logger.warning(
                "sender process did not stop in time; killing it",
                extra={"action": "sender_process_killed", "pid": child.pid},
            )
            child.kill()
            child.join(5)

    @property
    def pid(self) -> int | None:
        """The current child's process id."""
        return None if self._child is None else self._child.pid


def child_main(settings: Settings, parent_pid: int) -> None:
    """The child: run this settings' senders (Braze and Currents) until SIGTERM or until
    the parent is gone."""
    from audience_sync.delivery.currents_pool import start_currents_senders
    from audience_sync.delivery.service import start_senders
    from audience_sync.logs import configure_logging
    from audience_sync.process import tune_gc
    from audience_sync.runtime import Runtime

    configure_logging(settings.get("log.level"))
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # Ctrl-C reaches the whole group: stop like the parent
    # The parent runs the WAL checkpointer: commits here need not checkpoint either.
    runtime = Runtime.from_settings(settings, background_checkpoint=True)
    pool = start_senders(runtime, stop)
    currents_pool = start_currents_senders(runtime, stop)
    tune_gc()
    while not stop.wait(ORPHAN_CHECK_S):
        if os.getppid() != parent_pid:
            logger.warning(
                "the run process is gone; stopping its senders",
                extra={"action": "sender_process_orphaned"},
            )
            stop.set()
    pool.join(STOP_TIMEOUT_S)
    if currents_pool is not None:
        currents_pool.join(STOP_TIMEOUT_S)
    runtime.engine.dispose()
