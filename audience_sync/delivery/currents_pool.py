"""Start and stop this process's mParticle sender (``run`` and ``worker``)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from audience_sync.delivery.currents_sender import CurrentsSender
from audience_sync.mparticle.client import MParticleClient
from audience_sync.mparticle.ratelimit import BatchBudget
from audience_sync.runtime import Runtime
from audience_sync.store import currents as queue
from audience_sync.store.engine import is_postgresql
from audience_sync.transport import Transport

logger = logging.getLogger(__name__)

SENDERS = 1
"""mParticle sender threads per process: one request carries 100 batches, so one thread keeps
up with the 270 batches/s budget; more processes (PostgreSQL) add more."""


class CurrentsSenderPool:
    """The mParticle sender thread(s) of a process, sharing one transport and one budget."""

    def __init__(self, runtime: Runtime, stop: threading.Event) -> None:
        settings = runtime.settings
        # A request must end before its batches' lease does, or they could be in flight twice.
        timeout_s = min(settings.get("currents.timeout_s"), 0.8 * settings.get("delivery.lease_s"))
        self.transport = Transport(
            name="mparticle",
            timeout_s=timeout_s,
            pool_maxsize=SENDERS,
        )
        self.client = MParticleClient(self.transport)
        self.budget = BatchBudget(settings.get("currents.batches_per_second"))
        prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}:mp"
        if not is_postgresql(runtime.engine):
            # SQLite: one sending process, so any lease left is from a killed predecessor.
            with runtime.engine.begin() as conn:
                queue.release_all_claims(conn)
        self.senders = [
            CurrentsSender(
                engine=runtime.engine,
                settings=settings,
                client=self.client,
                budget=self.budget,
                worker_id=f"{prefix}:{n}",
                stop=stop,
            )
            for n in range(SENDERS)
        ]
        self.threads = [
            threading.Thread(target=s.run_forever, name=f"currents-sender-{n}", daemon=True)
            for n, s in enumerate(self.senders)
        ]

    def start(self) -> CurrentsSenderPool:
        for thread in self.threads:
            thread.start()
        logger.info(
            "currents senders started",
            extra={
                "action": "senders_started",
                "vendor": "mparticle",
                "workers": len(self.threads),
            },
        )
        return self

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)
        self.client.close()


def start_currents_senders(runtime: Runtime, stop: threading.Event) -> CurrentsSenderPool | None:
    """Start the mParticle sender when feeds are configured (else there is nothing to send)."""
    if not runtime.settings.feeds:
        return None
    return CurrentsSenderPool(runtime, stop).start()
