"""Start and stop the senders of one process (``delivery.workers`` threads), and the thread
that applies the Firehose journal to the membership state they deliver."""

from __future__ import annotations

import logging
import threading

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.delivery.braze_sender import BrazeSender
from audience_sync.delivery.heartbeat import Heartbeat, new_worker_id
from audience_sync.firehose.journal_applier import JournalApplier
from audience_sync.runtime import Runtime

logger = logging.getLogger(__name__)


class SenderPool:
    """``delivery.workers`` sender threads sharing one HTTP client and one rate budget."""

    def __init__(
        self, runtime: Runtime, stop: threading.Event, *, apply_journal: bool = True
    ) -> None:
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
        self.heartbeat = Heartbeat(
            engine=runtime.engine,
            settings=settings,
            worker_id=new_worker_id(),
            senders=workers,
            budget=self.budget,
            stop=stop,
        )
        self.senders = [
            BrazeSender(
                engine=runtime.engine,
                settings=settings,
                client=self.client,
                budget=self.budget,
                worker_id=sender_id,
                stop=stop,
            )
            for sender_id in self.heartbeat.sender_ids
        ]
        # `run` applies the journal in a process of its own (audience_sync.sender_process).
        self.applier = (
            JournalApplier(
                runtime.engine, coalesce_s=settings.get("delivery.coalesce_s"), stop=stop
            )
            if apply_journal
            else None
        )
        self.threads = [
            threading.Thread(target=self._run, args=(s,), name=f"sender-{n}", daemon=True)
            for n, s in enumerate(self.senders)
        ]

    def start(self) -> SenderPool:
        """Join the worker registry, then start every sender thread."""
        self.heartbeat.start()
        if self.applier is not None:
            self.applier.start()
        for thread in self.threads:
            thread.start()
        logger.info(
            "senders started",
            extra={"action": "senders_started", "workers": len(self.threads)},
        )
        return self

    def _run(self, sender: BrazeSender) -> None:
        if self.heartbeat.wait_ready():
            sender.run_forever()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the senders to finish their current batch after ``stop`` is set."""
        for thread in self.threads:
            thread.join(timeout)
        if self.applier is not None:
            self.applier.join(timeout)
        self.heartbeat.join(timeout)
        self.client.close()


def start_senders(
    runtime: Runtime, stop: threading.Event, *, apply_journal: bool = True
) -> SenderPool:
    """Start this process's senders (and the journal applier, unless ``apply_journal`` is
    False); they run until ``stop`` is set."""
    return SenderPool(runtime, stop, apply_journal=apply_journal).start()
