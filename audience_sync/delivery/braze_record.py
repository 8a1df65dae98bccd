"""What the Braze sender writes after each step: the store work of a planned batch, of a
request's outcome, of a hand-back, of a suspension. Each takes the connection of the sender's
transaction (:meth:`audience_sync.delivery.loop.SenderLoop.transaction`). The records of a
plan, a request's outcome and a hand-back are deferred to the sender's next transaction
(:meth:`~audience_sync.delivery.loop.SenderLoop.defer`): their counts and data points go to
that transaction's :class:`~audience_sync.delivery.tally.Tally`, written once at its end.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.answer_plan import RefusedFields
from audience_sync.core.datapoints import datapoints_of
from audience_sync.core.delivery_plan import (
    BatchPlan,
    FailurePlan,
    PendingWrite,
    accepted_rows,
    plan_claim_failures,
)
from audience_sync.core.retry import RetryPolicy
from audience_sync.core.state import AckRow, Claim, Failure
from audience_sync.core.states import DeliveryCounter, DeliveryReason
from audience_sync.delivery.tally import Tally
from audience_sync.store import connections, outbox
from audience_sync.store.counters import increment
from audience_sync.store.field_flags import save_field_flags
from audience_sync.store.ledger import (
    AcknowledgedValues,
    encode_acknowledged,
    finish_acknowledged,
    save_acknowledged,
    save_encoded,
)


def _scope(workspace_id: int) -> str:
    return f"workspace:{workspace_id}"


def record_plan(
    conn: sa.Connection,
    tally: Tally,
    *,
    worker_id: str,
    workspace_id: int,
    plan: BatchPlan,
    now: float,
) -> None:
    """Hand back the users that wait, finish those that need no write (recording their
    acknowledged state where it changed), and count new guard flags."""
    outbox.release(conn, worker_id=worker_id, workspace_id=workspace_id, due_at=plan.deferred)
    outbox.release(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        due_at=plan.held_back,
        reason=DeliveryReason.CONNECTION_INVALID,
    )
    save_acknowledged(conn, workspace_id=workspace_id, rows=plan.changed_acks, now=now)
    outbox.finish(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        external_ids=[r.external_id for r in plan.unchanged],
        now=now,
        next_due_at=now,
    )
    counts = dict(plan.new_flags)
    if plan.unchanged:
        counts[DeliveryCounter.UNCHANGED] = len(plan.unchanged)
        # A resend-everything output would have sent these users whole.
        counts[DeliveryCounter.DATAPOINTS_FULL] = _full_datapoints(plan.unchanged)
    tally.count(_scope(workspace_id), counts, now=now)


@dataclass(frozen=True, kw_only=True, slots=True)
class AcceptedRecord:
    """What to record for a request's accepted writes, built before the transaction (the
    writer holds SQLite's one write lock while it runs): their acknowledged rows, encoded, and
    their data points."""

    accepted: Sequence[PendingWrite]
    values: list[AcknowledgedValues]
    charges: Counter[tuple[int, int]]
    spent: int
    full: int


def prepare_accepted(accepted: Sequence[PendingWrite], *, now: float) -> AcceptedRecord:
    """The record of ``accepted`` for :func:`record_request`."""
    rows, charges = accepted_rows(accepted)
    return AcceptedRecord(
        accepted=accepted,
        values=encode_acknowledged(rows, now=now),
        charges=charges,
        spent=sum(charges.values()),
        full=_full_datapoints(rows),
    )


def record_request(
    conn: sa.Connection,
    tally: Tally,
    *,
    worker_id: str,
    workspace_id: int,
    record: AcceptedRecord,
    failures: Sequence[Failure],
    counts: Mapping[str, int],
    now: float,
    next_due_at: float,
) -> None:
    """Persist one request's outcome for every user in it; the data points spent, and those a
    resend-everything output would have spent on the same users, go to ``tally``.

    On PostgreSQL the accepted users of every request of the transaction are finished and
    acknowledged together at its end, in one statement (:class:`_AcceptedUsers`)."""
    if conn.dialect.name == "postgresql":
        outbox.record_failures(
            conn, worker_id=worker_id, workspace_id=workspace_id, failures=failures
        )
        tally.count(_scope(workspace_id), counts, now=now)
        if record.accepted:
            gathered = tally.last_step("braze.accepted", lambda: _AcceptedUsers(worker_id))
            assert isinstance(gathered, _AcceptedUsers)
            gathered.add(workspace_id, record, now=now, next_due_at=next_due_at)
        return
    owned = outbox.finish(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        external_ids=[p.claim.external_id for p in record.accepted],
        now=now,
        next_due_at=next_due_at,
    )
    if len(owned) < len(record.accepted):
        # Only the lease holder records what Braze acknowledged (see outbox.renew); a lease
        # lost meanwhile is rare.
        record = prepare_accepted(
            [p for p in record.accepted if p.claim.external_id in owned], now=now
        )
    save_encoded(conn, workspace_id=workspace_id, values=record.values, now=now)
    outbox.record_failures(conn, worker_id=worker_id, workspace_id=workspace_id, failures=failures)
    tally.count(_scope(workspace_id), counts, now=now)
    _charge(tally, workspace_id, record, now=now)


def _charge(tally: Tally, workspace_id: int, record: AcceptedRecord, *, now: float) -> None:
    """The data points of ``record``'s users (those spent, and those a resend-everything
    output would have spent) to ``tally``."""
    tally.charge(workspace_id, record.charges, now=now)
    tally.count(
        _scope(workspace_id),
        {DeliveryCounter.DATAPOINTS: record.spent, DeliveryCounter.DATAPOINTS_FULL: record.full},
        now=now,
    )
    tally.spent += record.spent
    tally.full += record.full


class _AcceptedUsers:
    """PostgreSQL: the accepted users of a transaction's requests, finished and acknowledged
    in one statement at its end (:func:`audience_sync.store.ledger.finish_acknowledged`), where
    each request took three (DELETE, release UPDATE, acknowledged upsert)."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.requests: list[tuple[int, AcceptedRecord, float, float]] = []

    def add(
        self, workspace_id: int, record: AcceptedRecord, *, now: float, next_due_at: float
    ) -> None:
        self.requests.append((workspace_id, record, now, next_due_at))

    def run(self, conn: sa.Connection, tally: Tally) -> None:
        rows = [
            (workspace_id, *values[:1], next_due_at, *values[1:])
            for workspace_id, record, _now, next_due_at in self.requests
            for values in record.values
        ]
        last_now = max(now for _ws, _r, now, _d in self.requests)
        owned = finish_acknowledged(conn, worker_id=self.worker_id, rows=rows, now=last_now)
        for workspace_id, record, now, next_due_at in self.requests:
            missing = [
                p.claim.external_id
                for p in record.accepted
                if (workspace_id, p.claim.external_id) not in owned
            ]
            if missing:
                # A change committed meanwhile (still ours: finished the two-step way), or a
                # lease lost (not ours: left alone, its acknowledgement not recorded). Rare.
                held = outbox.finish(
                    conn,
                    worker_id=self.worker_id,
                    workspace_id=workspace_id,
                    external_ids=missing,
                    now=now,
                    next_due_at=next_due_at,
                )
                lost = set(missing) - held
                if held:
                    late = prepare_accepted(
                        [p for p in record.accepted if p.claim.external_id in held], now=now
                    )
                    save_encoded(conn, workspace_id=workspace_id, values=late.values, now=now)
                if lost:
                    record = prepare_accepted(
                        [p for p in record.accepted if p.claim.external_id not in lost], now=now
                    )
            _charge(tally, workspace_id, record, now=now)


def _full_datapoints(rows: Sequence[AckRow]) -> int:
    """What a resend-everything output would spend on ``rows``: each distinct acknowledged
    value (users planned alike share one) is counted once, times its users."""
    points_of: dict[int, int] = {}
    full = 0
    for row in rows:
        points = points_of.get(id(row.attributes))
        if points is None:
            points = points_of[id(row.attributes)] = datapoints_of(row.attributes)
        full += points
    return full


def record_resends(
    conn: sa.Connection,
    tally: Tally,
    *,
    worker_id: str,
    workspace_id: int,
    refused: Sequence[RefusedFields],
    resend: Sequence[PendingWrite],
    now: float,
) -> None:
    """Remember the field values Braze refused, and hand their users and those to resend
    back due now, without an attempt: Braze applied nothing of their objects (SPEC §5.3)."""
    save_field_flags(
        conn,
        workspace_id=workspace_id,
        flags=[(r.pending.external_id, f) for r in refused for f in r.flags],
        now=now,
    )
    # The outbox keeps each user's reason (invalid_email...) as its last outcome.
    by_reason: dict[str, list[PendingWrite]] = defaultdict(list)
    for r in refused:
        by_reason[r.reason].append(r.pending)
    by_reason[DeliveryReason.RESENT].extend(resend)
    for reason, group in by_reason.items():
        if group:
            outbox.release(
                conn,
                worker_id=worker_id,
                workspace_id=workspace_id,
                due_at={p.external_id: now for p in group},
                reason=reason,
                in_flight={p.external_id: p.in_flight_before() for p in group},
            )
    counts = {DeliveryReason.FIELD_REFUSED: len(refused), DeliveryReason.RESENT: len(resend)}
    tally.count(_scope(workspace_id), counts, now=now)


def record_error(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    claims: Sequence[Claim],
    policy: RetryPolicy,
    reason: str,
    jitter: Callable[[], float],
    now: float,
) -> FailurePlan:
    """A failed attempt for each claimed user still held after an unexpected error (the others
    were recorded before it), under the retry policy. Whether a request went out is unknown:
    each user's write-ahead record stays as it is."""
    mine = outbox.held(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        external_ids=[c.external_id for c in claims],
    )
    held = [c for c in claims if c.external_id in mine]
    plan = plan_claim_failures(
        held, policy, reason=reason, now=now, jitters=[jitter() for _ in held]
    )
    outbox.record_failures(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        failures=plan.failures,
        keep_in_flight=True,
    )
    scope = _scope(workspace_id)
    increment(conn, {(scope, r): n for r, n in plan.counts.items() if n}, now=now)
    return plan


def release(
    conn: sa.Connection,
    tally: Tally,
    *,
    worker_id: str,
    workspace_id: int,
    batch: Sequence[PendingWrite],
    due_at: float,
    reason: str,
    now: float,
) -> None:
    """Hand users back without an attempt; Braze surely applied nothing of this write."""
    outbox.release(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        due_at={p.external_id: due_at for p in batch},
        reason=reason,
        in_flight={p.external_id: p.in_flight_before() for p in batch},
    )
    tally.count(_scope(workspace_id), {reason: len(batch)}, now=now)


def suspend(
    conn: sa.Connection, *, workspace_id: int, reason: str, now: float, probe_at: float
) -> bool:
    """Suspend the workspace (its key or URL is refused); True if this sender was first."""
    first = connections.suspend_workspace(
        conn, workspace_id=workspace_id, reason=reason, now=now, probe_at=probe_at
    )
    increment(conn, {(_scope(workspace_id), reason): 1}, now=now)
    return first
