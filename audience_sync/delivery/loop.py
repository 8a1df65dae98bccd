"""The sender skeleton every vendor shares: claim → plan → pack → send → record.

:class:`SenderLoop` owns the loop (poll when idle, survive a database outage, stop on request),
the grouping of claimed work by destination, the one transaction runner and the one retry
policy (:mod:`audience_sync.core.retry` via :func:`audience_sync.core.delivery_plan.plan_failures`).
A vendor's sender subclasses it and supplies what differs: how work is claimed, what groups it
(a Braze workspace, an mParticle feed), and how a group is planned, packed, sent and recorded.

A SIGKILL anywhere loses nothing: until the record step commits, claimed work is only leased,
and the lease runs out.

Fewer, fuller write transactions: the store work of a step that returns nothing the sender
needs (recording an outcome, handing work back) is *deferred* (:meth:`SenderLoop.defer`) and
commits with the sender's next transaction (a write-ahead record, or the flush at the end of the
iteration). A Braze claim of four requests then writes in three transactions, not ten, each one
passing SQLite's single-writer gate once. A deferred record lost to a crash is the same
as a crash before it: the users stay leased, then are sent again from their write-ahead record.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
import typing as t
from collections.abc import Callable, Hashable, Sequence

import sqlalchemy as sa

from audience_sync.core.delivery_plan import FailedWrite, FailurePlan, plan_failures
from audience_sync.core.retry import RetryPolicy
from audience_sync.core.states import DeliveryReason
from audience_sync.delivery.tally import Tally
from audience_sync.store.statistics import analyze
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)


def retry_policy(settings: t.Any, *, retry_window_s: float) -> RetryPolicy:
    """The one retry policy of every sender, from ``delivery.*``; only the give-up window
    differs by vendor (Braze: ``delivery.retry_window_s``; Currents: ``currents.retention_s``)."""
    return RetryPolicy(
        base_s=settings.get("delivery.backoff_base_s"),
        cap_s=settings.get("delivery.backoff_cap_s"),
        retry_window_s=retry_window_s,
        max_attempts=settings.get("delivery.max_attempts"),
    )


ANALYZE_INTERVAL_S = 300.0
"""While senders keep finding work, PostgreSQL's planner statistics are refreshed this often
(a bulk load's rows are then planned for within minutes, whatever autovacuum does), and sooner
for a table that changed by more rows than it holds: one sender of all processes does, when no
one did (:func:`analyze`)."""
ANALYZE_CHECK_S = 2.0
"""How often a sender that keeps finding work asks whether statistics need refreshing."""

Item = t.TypeVar("Item")
T = t.TypeVar("T")


class SenderLoop(abc.ABC, t.Generic[Item]):
    """One sender; several may run at once (threads or processes)."""

    vendor: t.ClassVar[str]
    """Names the vendor in log lines."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        worker_id: str,
        policy: RetryPolicy,
        poll_interval_s: float,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.policy = policy
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.jitter = jitter
        self.stop = stop or threading.Event()
        self._deferred: list[Callable[[sa.Connection, Tally], object]] = []
        self._next_analyze = 0.0

    # -- what a vendor supplies ----------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, now: float) -> Sequence[Item]:
        """Lease the next due work (in one transaction)."""

    @abc.abstractmethod
    def group_of(self, item: Item) -> Hashable:
        """The destination an item is sent to (requests never mix destinations)."""

    @abc.abstractmethod
    def deliver(self, group: t.Any, items: Sequence[Item]) -> None:
        """Plan, pack, send and record the items of one destination."""

    def before_claim(self, now: float) -> int:
        """Work to do before each claim (probes of paused destinations); returns items handled."""
        return 0

    # -- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Deliver until ``stop`` is set; sleep ``poll_interval_s`` when idle."""
        while not self.stop.is_set():
            try:
                handled = self.run_once()
            except sa.exc.OperationalError as exc:
                # Database unavailable or locked for too long: leases protect the work.
                logger.warning(
                    "database error in sender; retrying",
                    extra={"action": "sender_db_error", "error": type(exc).__name__},
                )
                handled = 0
            except Exception:
                logger.exception("sender iteration failed", extra={"action": "sender_error"})
                handled = 0
            if not handled:
                self.stop.wait(self.poll_interval_s)

    def run_once(self) -> int:
        """Claim and deliver one batch; returns the number of items handled."""
        now = self.clock()
        handled = self.before_claim(now)
        items = self.claim(now)
        if items and now >= self._next_analyze:
            # At the first work after start (after an import, a restart) and then periodically.
            self._next_analyze = now + ANALYZE_CHECK_S
            analyze(self.engine, max_age_s=ANALYZE_INTERVAL_S)
        groups: dict[Hashable, list[Item]] = {}
        for item in items:
            groups.setdefault(self.group_of(item), []).append(item)
        try:
            for group, members in groups.items():
                self.deliver_isolated(group, members)
        finally:
            self.flush()
        return handled + len(items)

    def deliver_isolated(self, group: t.Any, items: Sequence[Item], **options: t.Any) -> None:
        """:meth:`deliver`, where an unexpected error stays with this destination: it becomes
        :meth:`record_error` for its items, and the other destinations of the claim are still
        delivered. A database error still ends the iteration (nothing could be recorded; the
        leases protect the work)."""
        try:
            self.deliver(group, items, **options)
        except sa.exc.OperationalError:
            raise
        except Exception as exc:
            logger.error(
                "delivery failed unexpectedly for one destination; the others go on",
                exc_info=exc,
                extra={
                    "action": "delivery_error",
                    "vendor": self.vendor,
                    "destination": str(group),
                    "items": len(items),
                    "error": type(exc).__name__,
                },
            )
            self.record_error(group, items, reason=DeliveryReason.INTERNAL_ERROR)

    def record_error(self, group: t.Any, items: Sequence[Item], *, reason: str) -> None:
        """Record an unexpected error of :meth:`deliver` for its items. A vendor records a
        counted failed attempt for each (retried, eventually dead-lettered); by default they
        stay leased until the lease runs out."""

    # -- shared steps --------------------------------------------------------------------------

    def transaction(self, work: Callable[[sa.Connection], T], *, action: str) -> T:
        """Run the deferred store work, then ``work``, in one write transaction (the one runner
        of the store). Deferred work is taken off the queue first: if the transaction fails, it
        is dropped like a crash would drop it (its users stay leased)."""
        deferred, self._deferred = self._deferred, []
        if not deferred:
            return in_transaction(self.engine, work, action=action)
        return self._run_deferred(deferred, work, action=action)

    def defer(self, work: Callable[[sa.Connection, Tally], object]) -> None:
        """Commit ``work`` with the next transaction of this sender (at the latest at the end of
        the iteration, :meth:`flush`). Its parameters must be built already; its counts and
        data points go to the transaction's :class:`~audience_sync.delivery.tally.Tally`."""
        self._deferred.append(work)

    def flush(self) -> None:
        """Commit the deferred store work now (once per iteration, and before a sender waits)."""
        deferred, self._deferred = self._deferred, []
        if deferred:
            self._run_deferred(deferred, lambda conn: None, action="record")

    def _run_deferred(
        self,
        deferred: list[Callable[[sa.Connection, Tally], object]],
        work: Callable[[sa.Connection], T],
        *,
        action: str,
    ) -> T:
        tallies: list[Tally] = []

        def all_work(conn: sa.Connection) -> T:
            # A fresh tally per try: a retried transaction counts its steps once.
            tally = Tally()
            tallies[:] = [tally]
            for step in deferred:
                step(conn, tally)
            result = work(conn)
            tally.write(conn, last=True)  # the commit goes with it (PostgreSQL)
            return result

        result = in_transaction(self.engine, all_work, action=action)
        self.committed(tallies[0])
        return result

    def committed(self, tally: Tally) -> None:
        """After deferred work committed: a vendor reports its tally (telemetry)."""

    def plan_failures(
        self, failed: Sequence[FailedWrite], *, now: float, **log: t.Any
    ) -> FailurePlan:
        """Each failed item's retry or dead letter under the one retry policy; logs the
        items given up on."""
        plan = plan_failures(failed, self.policy, now=now, jitters=[self.jitter() for _ in failed])
        self.log_dead(plan, **log)
        return plan

    def log_dead(self, plan: FailurePlan, **log: t.Any) -> None:
        """Log each item a failure plan gives up on."""
        for failure in plan.dead:
            logger.warning(
                "delivery gave up for a user",
                extra={
                    "action": "delivery_gave_up",
                    "vendor": self.vendor,
                    "reason": failure.reason,
                    "attempts": failure.attempts,
                    **log,
                },
            )
