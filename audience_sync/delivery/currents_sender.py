"""The mParticle sender: claim → plan → pack → send → record (SPEC §6.3 to §6.5).

1. form batches from queued events: the intake forms most batches itself, in the transaction
   that accepts the events; what it could not (held events a feed now takes, replayed events)
   is formed here (``source_request_id`` derived from the content, fixed once leased);
2. lease the oldest due batches of active feeds, one per user at a time (arrival order);
3. pack them into ``/v2/bulkevents`` requests (≤100 batches, <256 KB) within the feed's
   batches-per-second budget;
4. record each request's outcome in one transaction: accepted batches are deleted with their
   events; 400/413 split the request to isolate the bad batch, which is dead-lettered with
   mParticle's message; 401/403 pause the feed (its batches stay, no attempt spent); 429 holds
   the feed key for Retry-After (no attempt); 5xx, timeouts and drops retry with the shared
   backoff policy until both the retention and the attempt budget are spent.

One bad feed never stalls the others: an unexpected error while a feed's batches are delivered
(a bug, a store error of that feed) is one failed attempt for them, like a 5xx
(:meth:`SenderLoop.deliver_isolated` → :meth:`CurrentsSender.record_error`), and a feed whose
planning fails stays queued; the other feeds go on in the same run. Formation is
:mod:`~audience_sync.delivery.currents_formation`, the store work of an outcome
:mod:`~audience_sync.delivery.currents_record`.

A paused feed is probed with its oldest pending batch every ``currents.probe_interval_s``, and at
once when its settings change; the first success resumes it. A SIGKILL anywhere loses nothing:
until step 4 commits a batch is only leased, and a resend carries the same ``source_request_id``.

Why one module past ~400 lines: the steps above share the sender's lease, budget and probe state;
formation, recording and failure decisions already live in their own modules.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from audience_sync.core.currents.failures import plan_batch_failures
from audience_sync.core.urls import UnsafeUrlError, guard_mparticle_url
from audience_sync.currents.service import CurrentsConfig
from audience_sync.delivery import currents_formation as formation
from audience_sync.delivery import currents_record as record
from audience_sync.delivery.loop import SenderLoop, retry_policy
from audience_sync.mparticle.client import FeedCredentials, MParticleClient
from audience_sync.mparticle.outcomes import Kind, Outcome
from audience_sync.mparticle.ratelimit import BatchBudget
from audience_sync.mparticle.requests import pack
from audience_sync.settings import Settings
from audience_sync.store import currents as queue

logger = logging.getLogger(__name__)

CLAIM_BATCHES = 1000
"""Batches leased at a time (ten full requests)."""
HOUSEKEEPING_INTERVAL_S = 1.0
"""How often feed rows, held events and probes are looked at."""


def feed_fingerprint(base_url: str, key: str, secret: str) -> str:
    """Identifies a feed's settings without storing them (a change triggers a probe)."""
    return hashlib.sha256("\x00".join([base_url, key, secret]).encode("utf-8")).hexdigest()


class CurrentsSender(SenderLoop[queue.ClaimedBatch]):
    """Forwards queued Currents events to mParticle; several may run (threads or processes).

    The loop, its polling, its survival of database outages and the one retry policy come from
    :class:`~audience_sync.delivery.loop.SenderLoop`; what is mParticle's is here: work is a
    formed batch, grouped by feed; before each claim, feeds are synced, paused feeds probed and
    queued events cut into batches.
    """

    vendor = "mparticle"

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: Settings,
        client: MParticleClient,
        budget: BatchBudget,
        worker_id: str,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            engine=engine,
            worker_id=worker_id,
            # Currents keep retrying for their retention (SPEC §6.5), not the Braze window.
            policy=retry_policy(settings, retry_window_s=settings.get("currents.retention_s")),
            poll_interval_s=settings.get("delivery.poll_interval_s"),
            clock=clock,
            jitter=jitter,
            stop=stop,
        )
        self.settings = settings
        self.client = client
        self.budget = budget
        self.config = CurrentsConfig.from_settings(settings)
        self.environment: str = settings.get("currents.environment")
        self.lease_s: float = settings.get("delivery.lease_s")
        # A request must be able to end before the lease of its batches does (see deliver).
        self.request_timeout_s: float = min(settings.get("currents.timeout_s"), 0.8 * self.lease_s)
        self._lease_until = 0.0
        self.formation_claims = formation.formation_claims(
            batches_per_second=budget.rate, lease_s=self.lease_s, claim_batches=CLAIM_BATCHES
        )
        self.coalesce_s: float = settings.get("delivery.coalesce_s")
        self.probe_interval_s: float = settings.get("currents.probe_interval_s")
        base_url = settings.get("currents.mparticle_url")
        allowed = settings.get("currents.allowed_mparticle_urls")
        self.url_problem: str | None = None
        try:
            # The canonical form is what is sent to: what was checked is what is called.
            base_url = guard_mparticle_url(base_url, allowed)
        except UnsafeUrlError as exc:
            self.url_problem = str(exc)
        self.credentials = {
            f.name: FeedCredentials(base_url=base_url, key=f.key.reveal(), secret=f.secret.reveal())
            for f in settings.feeds
        }
        self.fingerprints = {
            name: feed_fingerprint(c.base_url, c.key, c.secret)
            for name, c in self.credentials.items()
        }
        self.states: dict[str, str] = {}
        self._next_housekeeping = 0.0
        self._rerouted = False
        if self.url_problem:
            logger.error(
                "currents.mparticle_url refused: %s; nothing is sent",
                self.url_problem,
                extra={"action": "currents_url_refused", "reason": self.url_problem},
            )

    # -- what the skeleton asks of a vendor ---------------------------------------------------

    def before_claim(self, now: float) -> int:
        """Sync feed rows, probe paused feeds, cut queued events into batches (sending those
        leased at formation); returns the batches handled."""
        if self.url_problem:
            return 0
        handled = 0
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
            self._housekeeping(now)
            handled += self._probe(now)
        return handled + self.form_batches(now)

    def claim(self, now: float) -> Sequence[queue.ClaimedBatch]:
        """Lease the oldest due batches of the active feeds, one per user at a time."""
        if self.url_problem:
            return []
        active = [n for n in self.credentials if self.states.get(n) != queue.FeedState.PAUSED]
        self._lease_until = now + self.lease_s
        return self.transaction(
            lambda conn: queue.claim_batches(
                conn,
                feeds=active,
                worker_id=self.worker_id,
                now=now,
                lease_s=self.lease_s,
                limit=CLAIM_BATCHES,
            ),
            action="currents_claim",
        )

    def group_of(self, item: queue.ClaimedBatch) -> str:
        """Requests never mix feeds (each has its own credentials)."""
        return item.feed

    def _housekeeping(self, now: float) -> None:
        reroute = not self._rerouted

        def work(conn: sa.Connection) -> dict[str, str]:
            states = queue.sync_feeds(conn, self.fingerprints, now=now)
            if reroute:
                # Held events wait for a feed; the feeds are fixed for this process's life, so
                # once at start is enough (new events are routed with the same feeds at intake).
                moved = queue.reroute_held(conn, self.config.route, now=now)
                if moved:
                    logger.info(
                        "%d held currents event(s) now have a feed",
                        moved,
                        extra={"action": "currents_rerouted", "count": moved},
                    )
            return states

        self.states = self.transaction(work, action="currents_feeds")
        self._rerouted = True

    def form_batches(self, now: float) -> int:
        """Cut queued events into batches, per feed, and send the ones leased at formation;
        returns the number of batches formed. A feed whose planning fails is left queued and
        logged; the others are still formed and sent."""
        due = formation.due_feeds(
            self.engine, self.credentials, now=now, coalesce_s=self.coalesce_s
        )
        formed = 0
        for feed in due:
            paused = self.states.get(feed) == queue.FeedState.PAUSED
            try:
                plan, claimed = formation.form_feed(
                    self.engine,
                    self.transaction,
                    feed,
                    environment=self.environment,
                    now=now,
                    claim=None if paused else (self.worker_id, now + self.lease_s),
                    claim_limit=self.formation_claims,
                )
            except queue.PlanConflictError:
                continue  # the events changed under the plan: planned again next round
            except sa.exc.OperationalError:
                raise  # the database, not this feed: the loop waits (leases protect the work)
            except Exception as exc:  # nothing was leased: the events stay queued
                logger.error(
                    "planning failed for feed %s; the other feeds go on",
                    feed,
                    exc_info=exc,
                    extra={"action": "delivery_error", "feed": feed, "error": type(exc).__name__},
                )
                continue
            formed += len(plan.batches)
            if claimed:
                self._lease_until = now + self.lease_s
                self.deliver_isolated(feed, claimed)
        return formed

    # -- probes --------------------------------------------------------------------------------

    def _probe(self, now: float) -> int:
        due = self.transaction(
            lambda conn: queue.claim_probe_turn(
                conn, now=now, probe_interval_s=self.probe_interval_s
            ),
            action="currents_probe_turn",
        )
        probed = 0
        for feed in due:
            if feed not in self.credentials:
                continue
            claim = self.transaction(
                lambda conn, feed=feed: queue.claim_probe(
                    conn, feed, worker_id=self.worker_id, now=now, lease_s=self.lease_s
                ),
                action="currents_claim_probe",
            )
            if claim is None:
                continue
            logger.info(
                "probing paused feed %s", feed, extra={"action": "currents_probe", "feed": feed}
            )
            probed += 1
            self._lease_until = now + self.lease_s
            self.deliver_isolated(feed, [claim], probe=True)
        return probed

    # -- one feed ------------------------------------------------------------------------------

    def deliver(
        self, feed: str, batches: Sequence[queue.ClaimedBatch], *, probe: bool = False
    ) -> None:
        """Pack and send the claimed batches of one feed, recording every outcome.

        Accepted batches are recorded together (one transaction per ten full requests and at
        the end); if the process dies before, they are resent with the same
        ``source_request_id``.
        """
        credentials = self.credentials[feed]
        by_id = {b.id: b for b in batches}
        requests = pack([(b.id, b.body) for b in batches])
        accepted: list[str] = []
        try:
            for index, request in enumerate(requests):
                if self.stop.is_set():
                    left = [i for r in requests[index:] for i in r.batch_ids]
                    self._release(left, due_at=self.clock())
                    return
                wait = self.budget.reserve(
                    credentials.key, len(request.batch_ids), now=self.clock()
                )
                if wait > 0:
                    self.stop.wait(wait)
                now = self.clock()
                if now + self.request_timeout_s >= self._lease_until:
                    # The lease could end mid-request (a slow server, a short lease): give the
                    # rest back rather than risk another sender taking them in flight.
                    left = [i for r in requests[index:] for i in r.batch_ids]
                    self._release(left, due_at=now)
                    return
                outcome = self.client.send(credentials, request.body, now=now)
                if outcome.kind == Kind.ACCEPTED:
                    accepted.extend(request.batch_ids)
                    if len(accepted) >= CLAIM_BATCHES:
                        # Recorded every ten full requests: a SIGKILL resends no more.
                        self._accepted(feed, accepted, now=self.clock(), probe=probe)
                        accepted = []
                    continue
                keep_going = self._record(
                    feed, [by_id[i] for i in request.batch_ids], outcome, now=now, probe=probe
                )
                if not keep_going:
                    rest = [i for r in requests[index + 1 :] for i in r.batch_ids]
                    due = now + (outcome.retry_after_s or 0.0)
                    self._release(rest, due_at=due, reason=outcome.reason)
                    return
        finally:
            if accepted:
                self._accepted(feed, accepted, now=self.clock(), probe=probe)

    def _accepted(self, feed: str, ids: Sequence[str], *, now: float, probe: bool) -> None:
        resume = probe or self.states.get(feed) == queue.FeedState.PAUSED

        self.transaction(
            lambda conn: record.record_accepted(
                conn, feed, ids, worker_id=self.worker_id, now=now, resume=resume
            ),
            action="currents_finish",
        )
        if resume:
            self.states[feed] = queue.FeedState.ACTIVE
            logger.info(
                "feed %s resumed", feed, extra={"action": "currents_feed_resumed", "feed": feed}
            )

    def _release(self, ids: Sequence[str], *, due_at: float, reason: str | None = None) -> None:
        if ids:
            self.transaction(
                lambda conn: queue.release(
                    conn, ids, worker_id=self.worker_id, due_at=due_at, reason=reason
                ),
                action="currents_release",
            )

    def _record(
        self,
        feed: str,
        batches: Sequence[queue.ClaimedBatch],
        outcome: Outcome,
        *,
        now: float,
        probe: bool,
    ) -> bool:
        """Act on one request's outcome; False when the feed must stop sending for now."""
        ids = [b.id for b in batches]
        kind = outcome.kind
        if kind == Kind.ACCEPTED:
            self._accepted(feed, ids, now=now, probe=probe)
            return True
        if kind in (Kind.BAD_REQUEST, Kind.TOO_LARGE):
            if len(batches) > 1:
                # Split to isolate the bad batch: halves, then single batches.
                half = len(batches) // 2
                for part in (batches[:half], batches[half:]):
                    body = b"[" + b",".join(b.body for b in part) + b"]"
                    self.budget.reserve(self.credentials[feed].key, len(part), now=now)
                    sub = self.client.send(self.credentials[feed], body, now=self.clock())
                    if not self._record(feed, part, sub, now=self.clock(), probe=probe):
                        return False
                return True
            reason = f"mparticle_{kind}: {outcome.message or 'refused'}"[:500]
            self.transaction(
                lambda conn: queue.dead_letter(
                    conn, {ids[0]: reason}, worker_id=self.worker_id, now=now
                ),
                action="currents_dead_letter",
            )
            logger.warning(
                "mParticle refused a batch of feed %s",
                feed,
                extra={"action": "currents_batch_refused", "feed": feed, "reason": reason},
            )
            return True
        if kind in (Kind.AUTH, Kind.NOT_FOUND):
            self.transaction(
                lambda conn: record.record_paused(
                    conn,
                    feed,
                    ids,
                    reason=outcome.reason,
                    worker_id=self.worker_id,
                    now=now,
                    probe_interval_s=self.probe_interval_s,
                ),
                action="currents_pause",
            )
            if self.states.get(feed) != queue.FeedState.PAUSED:
                logger.warning(
                    "feed %s paused: mParticle refused its credentials (%s)",
                    feed,
                    outcome.reason,
                    extra={
                        "action": "currents_feed_paused",
                        "feed": feed,
                        "reason": outcome.reason,
                    },
                )
            self.states[feed] = queue.FeedState.PAUSED
            return False
        if kind == Kind.RATE_LIMITED:
            until = now + (outcome.retry_after_s or 0.0)
            self.budget.block(self.credentials[feed].key, until=until)
            self._release(ids, due_at=until, reason=outcome.reason)
            return False
        # Transient: back off per batch with the shared policy; give up only past both budgets.
        self._fail(feed, batches, reason=outcome.reason, now=now)
        return probe is False

    def record_error(self, group: str, items: Sequence[queue.ClaimedBatch], *, reason: str) -> None:
        """After an unexpected error delivering a feed's batches (a bug, a store error of that
        feed): one failed attempt for those still leased here, as for a 5xx, so they are
        retried and dead-lettered with the reason once both budgets are spent. Whether a request
        went out is unknown; a resend carries the same ``source_request_id``."""
        self._fail(group, items, reason=reason, now=self.clock())

    def _fail(
        self, feed: str, batches: Sequence[queue.ClaimedBatch], *, reason: str, now: float
    ) -> None:
        failures = plan_batch_failures(
            batches, self.policy, reason=reason, now=now, jitters=[self.jitter() for _ in batches]
        )
        self.transaction(
            lambda conn: record.record_failures(
                conn, failures, reason=reason, worker_id=self.worker_id, now=now
            ),
            action="currents_retry",
        )
        if failures.dead:
            logger.warning(
                "gave up on %d batch(es) of feed %s",
                len(failures.dead),
                feed,
                extra={
                    "action": "delivery_gave_up",
                    "vendor": self.vendor,
                    "feed": feed,
                    "reason": f"gave_up: {reason}",
                    "batches": len(failures.dead),
                },
            )
