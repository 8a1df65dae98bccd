"""Start and stop the senders of one process (``delivery.workers`` threads)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.delivery.braze_sender import BrazeSender
from audience_sync.runtime import Runtime

logger = logging.getLogger(__name__)


class SenderPool:
    """``delivery.workers`` sender threads sharing one HTTP client and one rate budget."""

    def __init__(self, runtime: Runtime, stop: threading.Event) -> None:
        settings = runtime.settings
        self.stop = stop
        workers = settings.get("delivery.workers")
        self.client = BrazeClient(
            timeout_s=settings.get("braze.timeout_s"),
            pool_maxsize=max(workers, 4),
            dry_run=settings.get("braze.dry_run"),
            dry_run_path=settings.get("braze.dry_run_path"),
        )
        self.budget = RateBudget(settings.get("braze.requests_per_second"))
        # Unique per process and thread, readable in the outbox's claimed_by column.
        prefix = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.senders = [
            BrazeSender(
                engine=runtime.engine,
                settings=settings,
                client=self.client,
                budget=self.budget,
                worker_id=f"{prefix}:{n}",
                stop=stop,
            )
            for n in range(workers)
        ]
        self.threads = [
            threading.Thread(target=s.run_forever, name=f"sender-{n}", daemon=True)
            for n, s in enumerate(self.senders)
        ]

    def start(self) -> SenderPool:
        """Start every sender thread."""
        for thread in self.threads:
            thread.start()
        logger.info(
            "senders started",
            extra={"action": "senders_started", "workers": len(self.threads)},
        )
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for the senders to finish their current batch after ``stop`` is set."""
        for thread in self.threads:
            thread.join(timeout)
        self.client.close()


def start_senders(runtime: Runtime, stop: threading.Event) -> SenderPool:
    """Start this process's senders; they run until ``stop`` is set."""
    return SenderPool(runtime, stop).start()
