"""The worker registry: which processes send, and whether they are still alive (SPEC §9).

Every process that runs senders registers one row and beats its heartbeat every few seconds.
Its senders claim outbox rows as ``<worker id>:<n>`` (:func:`sender_ids`). When a worker's
heartbeat has stopped for ``timeout_s`` (SIGKILL, a lost machine), any live worker
:func:`reap_stale` its row and **cuts its leases short**: a lease that never covered a request
ends at once; one renewed for a request ends ``request_timeout_s`` plus
:data:`~audience_sync.core.leases.SEND_WITHIN_S` after that renewal, the latest moment
the request could still be running. So a user is never in flight twice, even
when the "dead" worker was only cut off from the database; its senders find out at their next
renew, which fails for the users taken from them.

On SQLite one process sends (SPEC §9): at start, once no other registered process is alive, it
releases every lease of the database at once (:func:`take_over`) instead of waiting for a
heartbeat to go stale.

The live workers also divide each REST key's rate budget between them (:func:`live_count`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.core.leases import SEND_WITHIN_S
from audience_sync.store.schema import outbox, workers
from audience_sync.store.statements import insert


@dataclass(frozen=True, kw_only=True)
class Reaped:
    """What :func:`reap_stale` did."""

    workers: int = 0
    leases: int = 0


def sender_ids(worker_id: str, senders: int) -> list[str]:
    """The ``claimed_by`` values of a worker's senders."""
    return [f"{worker_id}:{n}" for n in range(senders)]


def register(
    conn: sa.Connection, *, worker_id: str, hostname: str, pid: int, senders: int, now: float
) -> None:
    """Add (or refresh) this process's row, beating at ``now``."""
    values = {
        "id": worker_id,
        "hostname": hostname,
        "pid": pid,
        "senders": senders,
        "started_at": now,
        "heartbeat_at": now,
    }
    stmt = insert(conn, workers).values(values)
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[workers.c.id],
            set_={"heartbeat_at": stmt.excluded.heartbeat_at, "senders": stmt.excluded.senders},
        )
    )


def beat(conn: sa.Connection, *, worker_id: str, now: float) -> bool:
    """Record that the worker is alive; False if its row is gone (it was reaped as stale, and
    must :func:`register` again)."""
    result = conn.execute(
        workers.update().where(workers.c.id == worker_id).values(heartbeat_at=now)
    )
    return bool(result.rowcount)


def unregister(conn: sa.Connection, *, worker_id: str) -> None:
    """Remove the row of a worker that stops cleanly (its senders have finished)."""
    conn.execute(workers.delete().where(workers.c.id == worker_id))


def live_count(conn: sa.Connection, *, now: float, timeout_s: float) -> int:
    """Workers with senders whose heartbeat is at most ``timeout_s`` old."""
    return conn.execute(
        sa.select(sa.func.count())
        .select_from(workers)
        .where(workers.c.heartbeat_at >= now - timeout_s, workers.c.senders > 0)
    ).scalar_one()


def reap_stale(
    conn: sa.Connection,
    *,
    now: float,
    timeout_s: float,
    lease_s: float,
    request_timeout_s: float,
) -> Reaped:
    """Remove the workers whose heartbeat is older than ``timeout_s`` and cut their leases
    short (see the module docstring). Concurrent reapers skip each other's rows."""
    stale = sa.select(workers.c.id, workers.c.senders).where(
        workers.c.heartbeat_at < now - timeout_s
    )
    if conn.dialect.name == "postgresql":
        stale = stale.with_for_update(skip_locked=True)
    rows = conn.execute(stale).all()
    if not rows:
        return Reaped()
    claimers = [s for row in rows for s in sender_ids(row.id, row.senders)]
    leases = _cut_leases(conn, claimers, lease_s=lease_s, request_timeout_s=request_timeout_s)
    conn.execute(workers.delete().where(workers.c.id.in_([row.id for row in rows])))
    return Reaped(workers=len(rows), leases=leases)


@dataclass(frozen=True, kw_only=True)
class Worker:
    """A registered sending process."""

    id: str
    hostname: str
    pid: int
    heartbeat_at: float


def others(conn: sa.Connection, *, worker_id: str) -> list[Worker]:
    """Every registered worker but ``worker_id``."""
    rows = conn.execute(
        sa.select(workers.c.id, workers.c.hostname, workers.c.pid, workers.c.heartbeat_at).where(
            workers.c.id != worker_id
        )
    )
    return [
        Worker(id=r.id, hostname=r.hostname, pid=r.pid, heartbeat_at=r.heartbeat_at) for r in rows
    ]


def take_over(conn: sa.Connection, *, worker_id: str) -> int:
    """Release every lease of the database at once and forget every other worker: the start of
    the one sending process on SQLite, once its predecessors are known to be gone. Returns the
    number of leases released."""
    result = conn.execute(
        outbox.update()
        .where(outbox.c.claimed_by.is_not(None))
        .values(claimed_by=None, claimed_until=None)
    )
    conn.execute(workers.delete().where(workers.c.id != worker_id))
    return result.rowcount or 0


def _cut_leases(
    conn: sa.Connection,
    claimers: Sequence[str],
    *,
    lease_s: float,
    request_timeout_s: float,
) -> int:
    """Take each lease from its holder. One that may cover a request in flight ends
    ``request_timeout_s + SEND_WITHIN_S`` after it was last taken or renewed; the others end now.

    Every claim and renew sets ``claimed_until = then + lease_s``, so ``claimed_until -
    lease_s`` is when the holder last took it: a request it started by ``then + SEND_WITHIN_S``
    has ended (or timed out) by ``then + SEND_WITHIN_S + request_timeout_s``. A request is only
    sent after its renew has recorded, write-ahead, what it may change (``in_flight``, never
    empty for a write): a lease without that record never covered a request, so its user is
    free at once. Clearing ``claimed_by``
    makes a second cut of the same lease impossible, and the old holder's renew, finish and
    failure records miss it.
    """
    cut_by = max(0.0, lease_s - request_timeout_s - SEND_WITHIN_S)
    taken = outbox.update().where(outbox.c.claimed_by.in_(claimers))
    # No record: SQL NULL, or JSON null (how the JSON type stores Python's None).
    no_record = sa.or_(outbox.c.in_flight.is_(None), sa.cast(outbox.c.in_flight, sa.Text) == "null")
    never_sent = conn.execute(taken.where(no_record).values(claimed_by=None, claimed_until=None))
    maybe_sent = conn.execute(
        taken.values(claimed_by=None, claimed_until=outbox.c.claimed_until - cut_by)
    )
    return (maybe_sent.rowcount or 0) + (never_sent.rowcount or 0)
