"""The outbox's lease protocol on SQLite and PostgreSQL (SPEC §5.4, §9)."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.core.states import OutboxState, WorkspaceState
from audience_sync.store import outbox
from audience_sync.store.schema import outbox as outbox_table
from audience_sync.store.schema import workspaces


def _workspace(engine, state=WorkspaceState.ACTIVE, endpoint="http://x"):
    with engine.begin() as conn:
        return conn.execute(
            workspaces.insert()
            .values(endpoint=endpoint, key_fingerprint="f", state=state, created_at=0)
            .returning(workspaces.c.id)
        ).scalar_one()


def _claim(engine, worker, now, limit=10, lease_s=10):
    with engine.begin() as conn:
        return outbox.claim(conn, worker_id=worker, now=now, lease_s=lease_s, limit=limit)


def _fail(conn, ws, *failures):
    """``record_failures`` by sender "a" of ``(external_id, attempts, retry_at, reason)`` each,
    first failed at 0."""
    outbox.record_failures(
        conn,
        worker_id="a",
        workspace_id=ws,
        failures=[
            outbox.Failure(
                external_id=e, attempts=n, first_failure_at=0, retry_at=retry_at, reason=reason
            )
            for e, n, retry_at, reason in failures
        ],
    )


def test_claims_are_exclusive_until_the_lease_runs_out(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, [f"u{i}" for i in range(5)], now=100)
    first = _claim(engine, "a", now=100, limit=3)
    second = _claim(engine, "b", now=101)
    assert len(first) == 3
    assert {c.external_id for c in second} == {f"u{i}" for i in range(5)} - {
        c.external_id for c in first
    }
    assert _claim(engine, "c", now=105) == []
    # A crashed sender's users come back once its lease has run out.
    assert len(_claim(engine, "c", now=112)) == 5


def test_suspended_workspaces_are_not_claimed(engine):
    ws = _workspace(engine, state=WorkspaceState.SUSPENDED)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u1"], now=0)
    assert _claim(engine, "a", now=1) == []


def test_renew_keeps_only_users_still_held(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u1", "u2"], now=0)
    _claim(engine, "a", now=0, lease_s=5)
    with engine.begin() as conn:  # u2's lease ran out and "b" took it
        conn.execute(
            outbox_table.update()
            .where(outbox_table.c.external_id == "u2")
            .values(claimed_by="b", claimed_until=100)
        )
        held = outbox.renew(
            conn, worker_id="a", workspace_id=ws, in_flight={"u1": None, "u2": None}, until=50
        )
    assert held == {"u1"}


def test_a_change_during_flight_keeps_the_user_pending(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u1", "u2"], now=0)
    _claim(engine, "a", now=0)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u2"], now=1)  # changed while in flight
        owned = outbox.finish(
            conn, worker_id="a", workspace_id=ws, external_ids=["u1", "u2"], now=2, next_due_at=5
        )
    assert owned == {"u1", "u2"}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(outbox_table.c.external_id, outbox_table.c.claimed_by, outbox_table.c.due_at)
        ).fetchall()
    assert rows == [("u2", None, 5.0)]


def test_failures_back_off_then_dead_letter_and_replay(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u1", "u2"], now=0)
    _claim(engine, "a", now=0)
    with engine.begin() as conn:
        _fail(conn, ws, ("u1", 1, 30, "http_503"), ("u2", 3, None, "blacklisted"))
    with engine.connect() as conn:
        rows = dict((r.external_id, r) for r in conn.execute(sa.select(outbox_table)))
    assert (rows["u1"].state, rows["u1"].due_at, rows["u1"].attempts) == (
        OutboxState.PENDING,
        30,
        1,
    )
    assert (rows["u2"].state, rows["u2"].last_reason) == (OutboxState.DEAD, "blacklisted")
    assert _claim(engine, "b", now=31)[0].external_id == "u1"
    with engine.begin() as conn:
        assert outbox.replay(conn, now=40) == 1
    assert [c.external_id for c in _claim(engine, "c", now=41)] == ["u2"]


def test_a_new_change_revives_a_dead_letter(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["u1"], now=0)
    _claim(engine, "a", now=0)
    with engine.begin() as conn:
        _fail(conn, ws, ("u1", 12, None, "x"))
        outbox.enqueue(conn, ws, ["u1"], now=100, delay_s=1)
        row = conn.execute(sa.select(outbox_table)).one()
    assert (row.state, row.attempts, row.due_at) == (OutboxState.PENDING, 0, 101)


def test_one_enqueue_of_new_pending_and_dead_users_applies_each_rule(engine):
    ws = _workspace(engine)
    with engine.begin() as conn:
        outbox.enqueue(conn, ws, ["pending", "backing-off", "dead"], now=0)
    _claim(engine, "a", now=0)
    with engine.begin() as conn:
        _fail(conn, ws, ("backing-off", 2, 50, "x"), ("dead", 12, None, "x"))
        outbox.release(conn, worker_id="a", workspace_id=ws, due_at={"pending": 30})
        before = {r.external_id: r for r in conn.execute(sa.select(outbox_table))}
        outbox.enqueue(conn, ws, ["new", "pending", "backing-off", "dead", "dead"], now=100)
        after = {r.external_id: r for r in conn.execute(sa.select(outbox_table))}

    def fields(row):
        return (row.state, row.generation, row.due_at, row.attempts, row.first_failure_at)

    assert fields(after["new"]) == (OutboxState.PENDING, 1, 100, 0, None)
    # A pending row keeps its due time, attempts and first failure: only its generation moves.
    for user in ("pending", "backing-off"):
        row, was = after[user], before[user]
        assert fields(row) == (
            OutboxState.PENDING,
            was.generation + 1,
            was.due_at,
            was.attempts,
            was.first_failure_at,
        )
    assert before["backing-off"].due_at == 50 and before["backing-off"].attempts == 2
    # A dead row is new work again.
    assert before["dead"].state == OutboxState.DEAD
    assert fields(after["dead"]) == (
        OutboxState.PENDING,
        before["dead"].generation + 1,
        100,
        0,
        None,
    )


def test_a_claim_takes_the_oldest_due_users_of_active_workspaces(engine):
    active, other, suspended = (
        _workspace(engine, endpoint="http://a"),
        _workspace(engine, endpoint="http://b"),
        _workspace(engine, WorkspaceState.SUSPENDED, endpoint="http://c"),
    )
    with engine.begin() as conn:
        # Enqueued out of due order, across workspaces: rowid order is not due order.
        for ws, user, now in [
            (active, "late", 30),
            (other, "early", 10),
            (suspended, "earliest", 0),
            (active, "middle", 20),
            (active, "not-due", 100),
        ]:
            outbox.enqueue(conn, ws, [user], now=now)
    first = _claim(engine, "a", now=50, limit=2)
    assert {(c.workspace_id, c.external_id) for c in first} == {
        (other, "early"),
        (active, "middle"),
    }
    assert all((c.generation, c.attempts, c.in_flight) == (1, 0, None) for c in first)
    assert [c.external_id for c in _claim(engine, "b", now=50)] == ["late"]
    with engine.begin() as conn:
        probe = outbox.claim(
            conn,
            worker_id="p",
            now=50,
            lease_s=10,
            limit=5,
            workspace_id=suspended,
            include_suspended=True,
        )
    assert [(c.workspace_id, c.external_id) for c in probe] == [(suspended, "earliest")]
