"""``audience-sync run``'s senders, and its Firehose journal applier, in child processes,
each restarted when it dies.

One Python process is one core at most (the GIL): with the HTTP server and the senders in one
process, delivery and acknowledgements competed for it. ``run`` therefore starts its senders in
a child (``multiprocessing`` spawn, so the child starts clean of the parent's threads and
sockets), and the journal applier in another: sharing the senders' GIL, each of its
statements waited behind four busy threads while holding SQLite's one write lock, which the
next acknowledgement waits for. ``run`` keeps one command, one log (the children write to the
same stderr) and one SIGTERM:

- SIGTERM/SIGINT to the parent: it stops the child with SIGTERM (the child finishes its current
  batch) and waits for it (:data:`STOP_TIMEOUT_S`, then SIGKILL).
- The child dies (SIGKILL, a crash): the parent logs it and starts a new one after
  :data:`RESTART_PAUSE_S`. Leases of the dead child's users are cut short by the new child's
  start (the worker registry); until then they run out by themselves.
- The parent dies (SIGKILL): on Linux the kernel kills the child with it (``PR_SET_PDEATHSIG``);
  elsewhere the child notices it is orphaned within a second and stops. The restarted ``run`` is
  again the only sending and applying process.

Both sides write through the same SQLite writer gate (:mod:`audience_sync.store.writer_gate`),
whose lock files make the intake go first across the two processes.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import typing as t
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType

from audience_sync.settings import Settings
from audience_sync.telemetry import Action

logger = logging.getLogger(__name__)

RESTART_PAUSE_S = 1.0
"""Pause before restarting a dead sender process (a child that dies at once does not spin)."""
STOP_TIMEOUT_S = 30.0
"""How long a stopping child may take to finish its batch before it is killed."""
ORPHAN_CHECK_S = 1.0
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
CHILD_NAMES = {"senders": "audsync-senders", "applier": "audsync-applier"}
"""The children's process names (``ps -o comm``, ``top``; at most 15 bytes): which child is
which, whatever the log level."""
CHILD_NICENESS = 10
"""Added to the children's nice value. On the 2-core bench (HTTP, sender and applier processes
with the local Braze server and load generator) ack p99 went from 140-150 ms to 128 ms at
the same delivery rate."""


def _mapping_proxy(items: dict[t.Any, t.Any]) -> MappingProxyType[t.Any, t.Any]:
    return MappingProxyType(items)


def _reduce_mapping_proxy(proxy: MappingProxyType[t.Any, t.Any]) -> tuple[t.Any, ...]:
    return _mapping_proxy, (dict(proxy),)


# The settings go to the child as they are (read-only mappings included), not re-read from the
# environment: a child sends with exactly its parent's configuration.
ForkingPickler.register(MappingProxyType, _reduce_mapping_proxy)


_ACTIONS = {
    "senders": (
        Action.SENDER_PROCESS_STARTED,
        Action.SENDER_PROCESS_DIED,
        Action.SENDER_PROCESS_KILLED,
        Action.SENDER_PROCESS_ORPHANED,
    ),
    "applier": (
        Action.APPLIER_PROCESS_STARTED,
        Action.APPLIER_PROCESS_DIED,
        Action.APPLIER_PROCESS_KILLED,
        Action.APPLIER_PROCESS_ORPHANED,
    ),
}
"""What each role's child logs: started, died, killed, orphaned."""


class SenderProcess:
    """Supervises one child of ``run`` (``role``: the ``senders``, or the journal
    ``applier``): start, restart when it dies, stop."""

    def __init__(self, settings: Settings, stop: threading.Event, *, role: str = "senders") -> None:
        self.settings = settings
        self.stop = stop
        self.role = role
        self._started, self._died, self._killed, _ = _ACTIONS[role]
        self._context = multiprocessing.get_context("spawn")
        self._child: t.Any = None
        self._thread = threading.Thread(target=self._supervise, name=f"{role}-process", daemon=True)
        self.restarts = 0

    def start(self) -> SenderProcess:
        """Start the child and the thread that restarts it."""
        self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> None:
        self._child = self._context.Process(
            target=child_main,
            args=(self.settings, os.getpid(), self.role),
            name=f"audience-sync-{self.role}",
        )
        self._child.start()
        logger.info(
            "%s process started",
            self.role,
            extra={"action": self._started, "pid": self._child.pid},
        )

    def _supervise(self) -> None:
        while not self.stop.is_set():
            self._child.join(timeout=0.5)
            if self._child.is_alive() or self.stop.is_set():
                continue
            logger.warning(
                "%s process exited; starting a new one",
                self.role,
                extra={
                    "action": self._died,
                    "pid": self._child.pid,
                    "exit_code": self._child.exitcode,
                },
            )
            if self.stop.wait(RESTART_PAUSE_S):
                break
            self.restarts += 1
            self._spawn()
        # Stopped from this thread: a child it started dies with it (PR_SET_PDEATHSIG follows
        # the starting thread), so it must outlive the child's graceful stop.
        self._stop_child()

    def _stop_child(self) -> None:
        """SIGTERM, wait for the current batch, then SIGKILL."""
        child = self._child
        if child is None or not child.is_alive():
            return
        child.terminate()
        child.join(STOP_TIMEOUT_S)
        if child.is_alive():
            logger.warning(
                "%s process did not stop in time; killing it",
                self.role,
                extra={"action": self._killed, "pid": child.pid},
            )
            child.kill()
            child.join(5)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the child to stop (``stop`` must be set)."""
        self._thread.join(STOP_TIMEOUT_S + 10 if timeout is None else timeout)

    @property
    def pid(self) -> int | None:
        """The current child's process id."""
        return None if self._child is None else self._child.pid


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel SIGKILL this child the moment its parent dies: a SIGKILLed
    ``run`` restarted at once must not find its old sender or applier still writing beside the
    new ones (the orphan check below only notices within :data:`ORPHAN_CHECK_S`)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody will kill us
        os.kill(os.getpid(), signal.SIGKILL)


def _name_process(name: str) -> None:
    """Set this process's name as ``ps`` and ``top`` show it (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode("ascii")[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        return


def child_main(settings: Settings, parent_pid: int, role: str = "senders") -> None:
    """The child: run this settings' senders (Braze and Currents), or the journal applier,
    until SIGTERM or until the parent is gone."""
    from audience_sync.delivery.currents_pool import start_currents_senders
    from audience_sync.delivery.service import start_senders
    from audience_sync.firehose.journal_applier import JournalApplier
    from audience_sync.logs import configure_logging
    from audience_sync.process import tune_gc
    from audience_sync.runtime import Runtime

    _die_with_parent(parent_pid)
    _name_process(CHILD_NAMES[role])
    configure_logging(settings.get("log.level"))
    # Acknowledgements first: under a full CPU the scheduler favours the HTTP process, whose
    # answers mParticle needs within 100 ms; the children still take every idle cycle.
    os.nice(CHILD_NICENESS)
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)  # Ctrl-C reaches the whole group: stop like the parent
    # The parent runs the WAL checkpointer: commits here need not checkpoint either.
    runtime = Runtime.from_settings(settings, background_checkpoint=True)
    background: list[t.Any] = []
    if role == "applier":
        coalesce_s = settings.get("delivery.coalesce_s")
        background.append(JournalApplier(runtime.engine, coalesce_s=coalesce_s, stop=stop).start())
    else:
        background.append(start_senders(runtime, stop, apply_journal=False))
        background.append(start_currents_senders(runtime, stop))
    tune_gc()
    while not stop.wait(ORPHAN_CHECK_S):
        if os.getppid() != parent_pid:
            logger.warning(
                "the run process is gone; stopping its %s",
                role,
                extra={"action": _ACTIONS[role][3]},
            )
            stop.set()
    for part in background:
        if part is not None:
            part.join(STOP_TIMEOUT_S)
    runtime.engine.dispose()
