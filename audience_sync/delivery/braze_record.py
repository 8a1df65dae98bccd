"""What the Braze sender writes after each step: the store work of a planned batch, of a
request's outcome, of a hand-back, of a suspension. Each takes the connection of the sender's
transaction (:meth:`audience_sync.delivery.loop.SenderLoop.transaction`); the counts of each
step (``*_counts``) are computed outside it and go to the sender's in-memory tally
(:mod:`audience_sync.delivery.tally`), written once per iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from audience_sync.core.delivery_plan import BatchPlan, PendingWrite
from audience_sync.core.state import AckRow, Failure
from audience_sync.core.states import DeliveryCounter, DeliveryReason
from audience_sync.store import connections, outbox
from audience_sync.store.ledger import save_acknowledged


def scope_of(workspace_id: int) -> str:
    """The counter scope of a workspace."""
    return f"workspace:{workspace_id}"


def plan_counts(plan: BatchPlan) -> dict[str, int]:
    """What :func:`record_plan` counts: new guard flags and the users needing no write."""
    counts = dict(plan.new_flags)
    if plan.unchanged:
        counts[DeliveryCounter.UNCHANGED] = len(plan.unchanged)
    return counts


def record_plan(
    conn: sa.Connection, *, worker_id: str, workspace_id: int, plan: BatchPlan, now: float
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


def record_request(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    accepted: Sequence[AckRow],
    failures: Sequence[Failure],
    now: float,
    next_due_at: float,
) -> None:
    """Persist one request's outcome for every user in it (``accepted``: the acknowledged rows
    of the users Braze accepted, from ``accepted_rows``)."""
    owned = outbox.finish(
        conn,
        worker_id=worker_id,
        workspace_id=workspace_id,
        external_ids=[r.external_id for r in accepted],
        now=now,
        next_due_at=next_due_at,
    )
    # Only the lease holder records what Braze acknowledged (see outbox.renew).
    rows = [r for r in accepted if r.external_id in owned]
    save_acknowledged(conn, workspace_id=workspace_id, rows=rows, now=now)
    outbox.record_failures(conn, worker_id=worker_id, workspace_id=workspace_id, failures=failures)


def release(
    conn: sa.Connection,
    *,
    worker_id: str,
    workspace_id: int,
    batch: Sequence[PendingWrite],
    due_at: float,
    reason: str,
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


def suspend(
    conn: sa.Connection, *, workspace_id: int, reason: str, now: float, probe_at: float
) -> bool:
    """Suspend the workspace (its key or URL is refused); True if this sender was first."""
    return connections.suspend_workspace(
        conn, workspace_id=workspace_id, reason=reason, now=now, probe_at=probe_at
    )
