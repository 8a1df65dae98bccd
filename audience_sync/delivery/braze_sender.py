"""The Braze sender: the skeleton of :mod:`audience_sync.delivery.loop` with Braze's parts
(SPEC §4.1, §5). Users are claimed from the outbox and grouped by workspace; for every batch:

1. read their desired and acknowledged state (:mod:`audience_sync.store.snapshot`) and plan
   each minimal write (:func:`audience_sync.core.delivery_plan.plan_batch`);
2. pack full ``/users/track`` requests (:func:`audience_sync.braze.requests.build_requests`),
   renew the lease of all their users and record write-ahead what each request may change, in
   one transaction, then send them back to back within the key's rate budget. A request that
   would go out more than :data:`~audience_sync.core.leases.SEND_WITHIN_S` after that
   renewal (it waited for the budget) renews its own users first, so a lease cut short by the
   worker registry never ends while its request may run;
3. record each user's outcome: acknowledged state and data points for the accepted, a durable
   retry time (or the dead-letter store) for the failed, and a new due time without an attempt
   for the rate-limited and the suspended. The records commit with the sender's next
   transaction (the flush at the end of the claim, or before a wait for the rate budget): a
   claim of four requests writes in three transactions (claim, write-ahead, records), not ten,
   and its counts and data points are upserted once per transaction.

Why one module past ~400 lines: refused-field resends, error isolation and splitting share the
request state here; the answer handling is the next piece to move to braze_answers.py.

Resending after a crash resends the same difference, which sets the same values (idempotent).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from audience_sync import telemetry
from audience_sync.braze.client import BrazeClient
from audience_sync.braze.outcomes import Kind, TrackOutcome, classify_response
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.braze.requests import ObjectTooLargeError, build_requests
from audience_sync.core.answer_plan import AnswerPlan
from audience_sync.core.delivery_plan import (
    WAIT_FOR_CONNECTION_S,
    FailedWrite,
    PendingWrite,
    fail_all,
    plan_batch,
)
from audience_sync.core.leases import SEND_WITHIN_S
from audience_sync.core.state import Claim
from audience_sync.core.states import DeliveryCounter, DeliveryReason
from audience_sync.delivery import braze_record as record
from audience_sync.delivery.braze_answers import plan_partial
from audience_sync.delivery.braze_target import ActiveConnections, Target, target_of
from audience_sync.delivery.loop import SenderLoop, retry_policy
from audience_sync.delivery.tally import Tally
from audience_sync.settings import Settings
from audience_sync.store import connections, outbox
from audience_sync.store.engine import autocommit, is_postgresql, read_only
from audience_sync.store.snapshot import load_snapshot

logger = logging.getLogger(__name__)

CLAIM_REQUESTS = 4
"""A sender claims this many full requests' worth of users at a time."""
PROBE_CHECK_INTERVAL_S = 1.0
"""How often a sender looks for suspended workspaces whose probe is due."""


class BrazeSender(SenderLoop[Claim]):
    """Delivers dirty users to Braze ``/users/track``."""

    vendor = "braze"

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: Settings,
        client: BrazeClient,
        budget: RateBudget,
        worker_id: str,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            engine=engine,
            worker_id=worker_id,
            policy=retry_policy(settings, retry_window_s=settings.get("delivery.retry_window_s")),
            poll_interval_s=settings.get("delivery.poll_interval_s"),
            clock=clock,
            jitter=jitter,
            stop=stop,
        )
        self.settings = settings
        self.client = client
        self.budget = budget
        self.max_objects: int = settings.get("braze.max_objects_per_request")
        self.max_bytes: int = settings.get("braze.max_request_bytes")
        self.min_resend_s: float = settings.get("braze.min_resend_interval_s")
        self.array_max_length: int = settings.get("braze.array_max_length")
        self.array_write: str = settings.get("braze.array_write")
        self.lease_s: float = settings.get("delivery.lease_s")
        self.probe_interval_s: float = settings.get("braze.probe_interval_s")
        self.active_connections = ActiveConnections(
            settings.connection_overrides, tuple(settings.get("braze.allowed_custom_endpoints"))
        )
        self._next_probe_check = 0.0
        self.postgresql = is_postgresql(engine)

    # -- claim ---------------------------------------------------------------------------------

    def claim(self, now: float) -> Sequence[Claim]:
        """Lease up to ``CLAIM_REQUESTS`` full requests' worth of due users."""
        return self.transaction(
            lambda conn: outbox.claim(
                conn,
                worker_id=self.worker_id,
                now=now,
                lease_s=self.lease_s,
                limit=self.max_objects * CLAIM_REQUESTS,
            ),
            action="claim",
        )

    def group_of(self, item: Claim) -> int:
        """Requests go to one workspace."""
        return item.workspace_id

    def before_claim(self, now: float) -> int:
        """Probe suspended workspaces whose probe is due, at most every second."""
        if now < self._next_probe_check:
            return 0
        self._next_probe_check = now + PROBE_CHECK_INTERVAL_S
        due = self.transaction(
            lambda conn: connections.claim_probes(conn, now=now, interval_s=self.probe_interval_s),
            action="claim_probes",
        )
        handled = 0
        for workspace_id in due:
            claims = self.transaction(
                lambda conn, ws=workspace_id: outbox.claim(
                    conn,
                    worker_id=self.worker_id,
                    now=now,
                    lease_s=self.lease_s,
                    limit=1,
                    workspace_id=ws,
                    include_suspended=True,
                ),
                action="claim_probe",
            )
            if claims:
                logger.info(
                    "probing suspended workspace",
                    extra={"action": "braze_probe", "workspace_id": workspace_id},
                )
                self.deliver_isolated(workspace_id, claims, probe=True)
                handled += len(claims)
        return handled

    # -- plan ----------------------------------------------------------------------------------

    def deliver(self, group: int, items: Sequence[Claim], *, probe: bool = False) -> None:
        """Plan and send the writes of claimed users of one workspace."""
        workspace_id, claims = group, items
        now = self.clock()
        ids = [c.external_id for c in claims]
        # On PostgreSQL without a transaction: its reads are one pipeline, which then needs
        # neither BEGIN nor the ROLLBACK that returns a connection to the pool (each statement
        # reads its own snapshot under READ COMMITTED either way).
        with (autocommit if self.postgresql else read_only)(self.engine) as conn:
            snapshot = load_snapshot(conn, workspace_id, ids, all_connections=True)
        active = self.active_connections.of(snapshot)
        if not active:
            due_at = {i: now + WAIT_FOR_CONNECTION_S for i in ids}
            self.defer(
                lambda conn, tally: outbox.release(
                    conn,
                    worker_id=self.worker_id,
                    workspace_id=workspace_id,
                    due_at=due_at,
                    reason=DeliveryReason.NO_ACTIVE_CONNECTION,
                )
            )
            return
        target = target_of(workspace_id, active)
        plan = plan_batch(
            claims,
            snapshot,
            active,
            now=now,
            min_resend_s=self.min_resend_s,
            array_max_length=self.array_max_length,
            array_write=self.array_write,
        )

        self.defer(
            lambda conn, tally: record.record_plan(
                conn, tally, worker_id=self.worker_id, workspace_id=workspace_id, plan=plan, now=now
            )
        )
        if plan.pending:
            self._send_all(target, list(plan.pending), probe=probe)

    def record_error(self, group: int, items: Sequence[Claim], *, reason: str) -> None:
        """After an unexpected error for a workspace: its users still held are delivered one by
        one, so a user whose own data raises fails alone; a user that fails alone gets a
        counted failed attempt (retried under the retry policy, dead-lettered when it gives
        up)."""
        now = self.clock()
        if len(items) > 1:
            mine = self.transaction(
                lambda conn: outbox.held(
                    conn,
                    worker_id=self.worker_id,
                    workspace_id=group,
                    external_ids=[c.external_id for c in items],
                ),
                action="held",
            )
            for claim in items:
                if claim.external_id in mine:
                    self.deliver_isolated(group, [claim])
            return
        plan = self.transaction(
            lambda conn: record.record_error(
                conn,
                worker_id=self.worker_id,
                workspace_id=group,
                claims=items,
                policy=self.policy,
                reason=reason,
                jitter=self.jitter,
                now=now,
            ),
            action="record_error",
        )
        self.log_dead(plan, workspace_id=group)

    # -- pack and send -------------------------------------------------------------------------

    def _send_all(self, target: Target, pending: list[PendingWrite], *, probe: bool) -> None:
        objects = [p.write.attributes for p in pending]
        while True:
            try:
                requests = build_requests(
                    objects, max_objects=self.max_objects, max_bytes=self.max_bytes
                )
                break
            except ObjectTooLargeError as exc:
                culprit = pending.pop(exc.index)
                objects.pop(exc.index)
                too_large = fail_all(
                    [culprit],
                    permanent=True,
                    reason=DeliveryReason.OBJECT_TOO_LARGE,
                    maybe_applied=False,
                )
                self._record(target, [], too_large, Counter())
        if not pending:
            return
        # One write-ahead record and lease renewal for all of the claim's requests, sent back to
        # back (SEND_WITHIN_S): one write transaction where there was one per request.
        renewed_at = self.clock()
        held = self._renew(target, pending, renewed_at=renewed_at)
        if len(held) < len(pending):
            if held:
                self._send_packed(target, held, probe=probe, renewed_at=renewed_at)
            return
        for request in requests:
            batch = [pending[i] for i in request.indices]
            if self.stop.is_set():
                self._release(target, batch, self.clock(), reason=DeliveryReason.SHUTDOWN)
                continue
            self._send(target, batch, request.body, probe=probe, renewed_at=renewed_at)

    def _send_packed(
        self, target: Target, batch: list[PendingWrite], *, probe: bool, renewed_at: float
    ) -> None:
        objects = [p.write.attributes for p in batch]
        for request in build_requests(
            objects, max_objects=self.max_objects, max_bytes=self.max_bytes
        ):
            self._send(
                target,
                [batch[i] for i in request.indices],
                request.body,
                probe=probe,
                renewed_at=renewed_at,
            )

    def _wait_for_budget(self, target: Target) -> bool:
        """Sleep until the key's budget allows a request; False if asked to stop meanwhile.
        Deferred records commit first: their users' leases would run on while it sleeps."""
        wait = self.budget.reserve(target.key_id)
        if wait > 0:
            self.flush()
            return not self.stop.wait(wait)
        return True

    def _renew(
        self, target: Target, batch: list[PendingWrite], *, renewed_at: float
    ) -> list[PendingWrite]:
        """Extend the lease on ``batch`` and record, write-ahead, what its requests may change
        (:func:`audience_sync.store.outbox.renew`); returns the users still held."""
        rows = outbox.encode_in_flight({p.external_id: p.in_flight_during() for p in batch})
        held = self.transaction(
            lambda conn: outbox.renew_encoded(
                conn,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                rows=rows,
                until=renewed_at + self.lease_s,
            ),
            action="renew",
        )
        if len(held) == len(batch):
            return batch
        # A lease ran out (the process stalled): another sender owns those users now.
        logger.warning(
            "lease lost before sending; leaving those users to their new sender",
            extra={
                "action": "lease_lost",
                "workspace_id": target.workspace_id,
                "users": len(batch) - len(held),
            },
        )
        return [p for p in batch if p.claim.external_id in held]

    def _send(
        self,
        target: Target,
        batch: list[PendingWrite],
        body: bytes,
        *,
        probe: bool,
        renewed_at: float,
    ) -> None:
        """Send one request whose users' lease was renewed at ``renewed_at`` (renewed again
        first if that is more than SEND_WITHIN_S ago)."""
        if not self._wait_for_budget(target):
            self._release(target, batch, self.clock(), reason=DeliveryReason.SHUTDOWN)
            return
        if self.clock() - renewed_at > SEND_WITHIN_S:
            renewed_at = self.clock()
            held = self._renew(target, batch, renewed_at=renewed_at)
            if len(held) < len(batch):
                if held:
                    self._send_packed(target, held, probe=probe, renewed_at=renewed_at)
                return
        started = time.perf_counter()
        response = self.client.track(target.endpoint, target.api_key, body)
        now = self.clock()
        self.budget.observe(target.key_id, response.headers)
        outcome = classify_response(response, sent=len(batch), now=now)
        elapsed = time.perf_counter() - started
        telemetry.braze_request(outcome.kind, objects=len(batch), seconds=elapsed)
        logger.debug(
            "braze request",
            extra={
                "action": "braze_batch_sent",
                "workspace_id": target.workspace_id,
                "objects": len(batch),
                "bytes": len(body),
                "status": response.status,
                "outcome": outcome.kind,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        self._act(target, batch, outcome, probe=probe, now=now, renewed_at=renewed_at)

    # -- record --------------------------------------------------------------------------------

    def _act(
        self,
        target: Target,
        batch: list[PendingWrite],
        outcome: TrackOutcome,
        *,
        probe: bool,
        now: float,
        renewed_at: float,
    ) -> None:
        counts: Counter[str] = Counter()
        kind = outcome.kind
        if kind in (Kind.ACCEPTED, Kind.PARTIAL):
            if probe and self.transaction(
                lambda conn: connections.resume_workspace(conn, workspace_id=target.workspace_id),
                action="resume",
            ):
                logger.info(
                    "workspace resumed after a successful probe",
                    extra={"action": "braze_resumed", "workspace_id": target.workspace_id},
                )
            answer = plan_partial(batch, outcome)
            counts[DeliveryCounter.ACCEPTED] += len(answer.accepted)
            self._record(target, answer.accepted, answer.failed, counts, answer=answer)
            return
        if kind == Kind.RETRY_ALL:
            # 5xx, timeout, dropped connection: Braze may have applied any of it.
            failed = fail_all(batch, permanent=False, reason=outcome.reason, maybe_applied=True)
            self._record(target, [], failed, counts)
            return
        if kind == Kind.RATE_LIMITED:
            retry_at = outcome.retry_at or now + 1.0
            self.budget.pause(target.key_id, retry_at)
            self._release(target, batch, retry_at, reason=DeliveryReason.RATE_LIMITED)
            return
        if kind == Kind.SPLIT and len(batch) > 1:
            middle = len(batch) // 2
            for half in (batch[:middle], batch[middle:]):
                self._send_packed(target, half, probe=probe, renewed_at=renewed_at)
            return
        if kind in (Kind.SPLIT, Kind.BAD_REQUEST):
            failed = fail_all(batch, permanent=True, reason=outcome.reason, maybe_applied=False)
            self._record(target, [], failed, counts)
            return

        # SUSPEND, CONFIG_ERROR: the key or URL is wrong for every user of the workspace.
        def suspend(conn: sa.Connection) -> bool:
            return record.suspend(
                conn,
                workspace_id=target.workspace_id,
                reason=outcome.reason,
                now=now,
                probe_at=now + self.probe_interval_s,
            )

        if self.transaction(suspend, action="suspend"):
            logger.warning(
                "workspace suspended: Braze refused the key or URL",
                extra={
                    "action": "braze_suspended",
                    "workspace_id": target.workspace_id,
                    "reason": outcome.reason,
                },
            )
        self._release(target, batch, now, reason=outcome.reason)

    def _release(
        self, target: Target, batch: Sequence[PendingWrite], due_at: float, *, reason: str
    ) -> None:
        """Hand users back without an attempt; Braze surely applied nothing of this write."""
        now = self.clock()
        self.defer(
            lambda conn, tally: record.release(
                conn,
                tally,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                batch=batch,
                due_at=due_at,
                reason=reason,
                now=now,
            )
        )

    def _record(
        self,
        target: Target,
        accepted: Sequence[PendingWrite],
        failed: Sequence[FailedWrite],
        counts: Counter[str],
        *,
        answer: AnswerPlan | None = None,
    ) -> None:
        """Persist one request's outcome for every user in it, with the next transaction."""
        now = self.clock()
        failures = self.plan_failures(failed, now=now, workspace_id=target.workspace_id)
        counts = counts + Counter(failures.counts)
        prepared = record.prepare_accepted(accepted, now=now)

        def persist(conn: sa.Connection, tally: Tally) -> None:
            record.record_request(
                conn,
                tally,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                record=prepared,
                failures=failures.failures,
                counts=counts,
                now=now,
                next_due_at=now + self.min_resend_s,
            )
            if answer is not None:
                record.record_resends(
                    conn,
                    tally,
                    worker_id=self.worker_id,
                    workspace_id=target.workspace_id,
                    refused=answer.refused,
                    resend=answer.resend,
                    now=now,
                )

        self.defer(persist)

    def committed(self, tally: Tally) -> None:
        """Report the data points of the records just committed."""
        telemetry.datapoints(tally.spent, tally.full)
