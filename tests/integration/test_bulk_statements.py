"""The hand-written set-based outbox statements (store/bulk), run on SQLite and PostgreSQL:
each touches only the rows this worker holds, and writes each row's own values."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from audience_sync.core.states import OutboxState, WorkspaceState
from audience_sync.store import bulk, outbox
from audience_sync.store.schema import outbox as outbox_table
from audience_sync.store.schema import workspaces


@pytest.fixture
def claimed(engine):
    """A workspace with u0..u5 claimed by worker "a" (u5 taken over by "b") and u6 not claimed."""
    with engine.begin() as conn:
        ws = conn.execute(
            workspaces.insert()
            .values(
                endpoint="http://x", key_fingerprint="f", state=WorkspaceState.ACTIVE, created_at=0
            )
            .returning(workspaces.c.id)
        ).scalar_one()
        outbox.enqueue(conn, ws, [f"u{i}" for i in range(6)], now=0)
        outbox.claim(conn, worker_id="a", now=0, lease_s=10, limit=10)
        conn.execute(
            outbox_table.update().where(outbox_table.c.external_id == "u5").values(claimed_by="b")
        )
        outbox.enqueue(conn, ws, ["u6"], now=0)
    return ws


def _rows(engine):
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox_table).order_by(outbox_table.c.external_id))
        return {r.external_id: r for r in rows}


def test_renew_writes_each_rows_in_flight_and_returns_the_held(engine, claimed):
    with engine.begin() as conn:
        held = bulk.of(conn).renew(
            conn,
            workspace_id=claimed,
            worker_id="a",
            until=50.0,
            rows=[
                ("u0", bulk.json_text({"keys": ["x"], "values": []})),
                ("u1", None),
                ("u5", bulk.json_text({"keys": ["y"]})),
                ("u6", bulk.json_text({"keys": ["z"]})),
                ("nobody", None),
            ],
        )
    assert held == {"u0", "u1"}
    rows = _rows(engine)
    assert rows["u0"].in_flight == {"keys": ["x"], "values": []}
    assert rows["u0"].claimed_until == 50.0
    assert rows["u1"].in_flight is None
    assert rows["u5"].in_flight is None and rows["u5"].claimed_until == 10.0
    assert rows["u6"].in_flight is None and rows["u6"].claimed_by is None


@pytest.mark.parametrize(
    "set_in_flight", [True, False], ids=["restore_in_flight", "keep_in_flight"]
)
def test_release_hands_back_with_each_rows_due_time(engine, claimed, set_in_flight):
    with engine.begin() as conn:
        bulk.of(conn).renew(
            conn,
            workspace_id=claimed,
            worker_id="a",
            until=50.0,
            rows=[("u0", bulk.json_text({"keys": ["during"]})), ("u1", None)],
        )
        bulk.of(conn).release(
            conn,
            workspace_id=claimed,
            worker_id="a",
            reason="rate_limited",
            rows=[
                ("u0", 7.0, bulk.json_text({"keys": ["before"]})),
                ("u1", 8.0, None),
                ("u5", 9.0, None),
            ],
            set_in_flight=set_in_flight,
        )
    rows = _rows(engine)
    assert (rows["u0"].claimed_by, rows["u0"].due_at, rows["u0"].last_reason) == (
        None,
        7.0,
        "rate_limited",
    )
    assert rows["u1"].due_at == 8.0
    assert rows["u0"].in_flight == ({"keys": ["before"]} if set_in_flight else {"keys": ["during"]})
    assert rows["u5"].claimed_by == "b" and rows["u5"].due_at == 0.0


def test_release_without_reason_keeps_the_last_one(engine, claimed):
    with engine.begin() as conn:
        conn.execute(outbox_table.update().values(last_reason="earlier"))
        bulk.of(conn).release(
            conn,
            workspace_id=claimed,
            worker_id="a",
            reason=None,
            rows=[("u2", 3.0, None)],
            set_in_flight=False,
        )
    assert _rows(engine)["u2"].last_reason == "earlier"


def test_record_failures_writes_retry_or_dead_and_keeps_new_changes_pending(engine, claimed):
    with engine.begin() as conn:
        outbox.enqueue(conn, claimed, ["u3"], now=1)  # a change while u3 is in flight
        bulk.of(conn).record_failures(
            conn,
            workspace_id=claimed,
            worker_id="a",
            pending=OutboxState.PENDING.value,
            rows=[
                (
                    "u2",
                    2,
                    1.0,
                    30.0,
                    OutboxState.PENDING.value,
                    "server_error",
                    bulk.json_text({"keys": ["k"]}),
                ),
                ("u3", 5, 1.0, 1.0, OutboxState.DEAD.value, "bad_request", None),
                ("u4", 5, 1.0, 1.0, OutboxState.DEAD.value, "bad_request", None),
                ("u5", 1, 1.0, 1.0, OutboxState.DEAD.value, "bad_request", None),
            ],
        )
    rows = _rows(engine)
    u2 = rows["u2"]
    assert (u2.state, u2.attempts, u2.first_failure_at, u2.due_at, u2.last_reason) == (
        "pending",
        2,
        1.0,
        30.0,
        "server_error",
    )
    assert u2.in_flight == {"keys": ["k"]} and u2.claimed_by is None
    assert rows["u3"].state == "pending"
    assert rows["u4"].state == "dead"
    assert rows["u5"].state == "pending" and rows["u5"].claimed_by == "b"


def test_many_rows_span_several_statements(engine, claimed):
    with engine.begin() as conn:
        ids = [f"m{i:04d}" for i in range(1200)]
        outbox.enqueue(conn, claimed, ids, now=0)
        outbox.claim(conn, worker_id="m", now=0, lease_s=10, limit=2000)
        held = bulk.of(conn).renew(
            conn, workspace_id=claimed, worker_id="m", until=99.0, rows=[(i, None) for i in ids]
        )
    assert held == set(ids)


def test_save_acknowledged_inserts_then_updates_keeping_the_last_write_time(engine, claimed):
    from audience_sync.store.schema import braze_users

    def save(rows, now):
        with engine.begin() as conn:
            bulk.of(conn).save_acknowledged(conn, workspace_id=claimed, now=now, rows=rows)

    save(
        [
            ("a", bulk.json_text({"In X": True, "arr": ["1", "2"]}), "[]", 5.0, "accepted"),
            ("b", "{}", bulk.json_text(["string_too_long"]), None, "unchanged"),
        ],
        now=5.0,
    )
    save([("a", bulk.json_text({"In X": False}), "[]", None, "unchanged")], now=9.0)
    with engine.connect() as conn:
        rows = {r.external_id: r for r in conn.execute(sa.select(braze_users))}
    a, b = rows["a"], rows["b"]
    assert (a.attributes, a.flags, a.last_write_at, a.last_outcome) == (
        {"In X": False},
        [],
        5.0,
        "unchanged",
    )
    assert (a.last_outcome_at, a.updated_at) == (9.0, 9.0)
    assert (b.attributes, b.flags, b.last_write_at) == ({}, ["string_too_long"], None)


def test_finish_drops_the_unchanged_and_releases_the_changed_it_holds(engine, claimed):
    with engine.begin() as conn:
        outbox.enqueue(conn, claimed, ["u1"], now=3)  # changed while in flight
        owned = bulk.of(conn).finish(
            conn,
            workspace_id=claimed,
            worker_id="a",
            external_ids=["u0", "u1", "u5", "u6"],
            next_due_at=42.0,
        )
    assert owned == {"u0", "u1"}
    rows = _rows(engine)
    assert "u0" not in rows
    assert (rows["u1"].claimed_by, rows["u1"].due_at, rows["u1"].attempts) == (None, 42.0, 0)
    assert rows["u5"].claimed_by == "b" and "u6" in rows


def test_snapshot_rows_read_desired_and_acknowledged_rows_with_json_decoded(engine, claimed):
    from audience_sync.store.schema import braze_users, memberships, users

    with engine.begin() as conn:
        conn.execute(
            users.insert(),
            [
                {
                    "account_id": 1,
                    "external_id": "u0",
                    "email": "a@x",
                    "push_tokens": ["t1"],
                    "updated_at": 2.0,
                },
                {
                    "account_id": 2,
                    "external_id": "u0",
                    "email": None,
                    "push_tokens": None,
                    "updated_at": 3.0,
                },
                {
                    "account_id": 1,
                    "external_id": "other",
                    "email": None,
                    "push_tokens": None,
                    "updated_at": 3.0,
                },
            ],
        )
        conn.execute(
            memberships.insert(),
            [
                {
                    "account_id": 1,
                    "external_id": "u0",
                    "audience_id": 7,
                    "is_member": True,
                    "changed_at": 1.0,
                },
                {
                    "account_id": 1,
                    "external_id": "u1",
                    "audience_id": 7,
                    "is_member": False,
                    "changed_at": 1.0,
                },
            ],
        )
        conn.execute(
            braze_users.insert().values(
                workspace_id=claimed,
                external_id="u1",
                attributes={"k": [1]},
                flags=["f"],
                updated_at=1.0,
            )
        )
        users_rows, member_rows, acked = bulk.of(conn).snapshot_rows(
            conn, workspace_id=claimed, accounts=[1], ids=["u0", "u1"]
        )
    assert users_rows == [(1, "u0", "a@x", ["t1"], 2.0)]
    assert sorted((a, e, au, bool(m)) for a, e, au, m in member_rows) == [
        (1, "u0", 7, True),
        (1, "u1", 7, False),
    ]
    assert acked == [("u1", {"k": [1]}, ["f"], None)]


def test_analyze_runs_on_postgresql_only(engine):
    from audience_sync.store.statistics import analyze

    assert analyze(engine) is (engine.dialect.name == "postgresql")
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            analyzed = conn.exec_driver_sql(
                "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'outbox'"
            ).scalar_one()
        assert analyzed


def test_analyze_with_a_max_age_runs_once_per_age_and_never_beside_another(engine):
    """Every sender of every worker asks at its first work: one of them analyzes."""
    from audience_sync.store.statistics import ADVISORY_LOCK_KEY, analyze

    postgresql = engine.dialect.name == "postgresql"
    assert analyze(engine, max_age_s=1e-6) is postgresql  # older than that: runs
    assert analyze(engine, max_age_s=300) is False  # fresh: skipped
    if postgresql:  # more rows changed than the planner knows of: stale again
        from audience_sync.store.statistics import CHANGED_ROWS_SLACK

        with engine.begin() as conn:
            outbox.enqueue(conn, 1, [f"n{n}" for n in range(CHANGED_ROWS_SLACK + 10)], now=1.0)
            if conn.dialect.server_version_info >= (15,):
                # A backend flushes its counts at most once a second, and an idle one only
                # after 10 s: this transaction's are flushed as it ends.
                conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        deadline = time.monotonic() + 30
        while not analyze(engine, max_age_s=300):  # once the statistics system has the counts
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert analyze(engine, max_age_s=300) is False
    if postgresql:
        with engine.connect() as other:
            other.exec_driver_sql("SELECT pg_advisory_lock(%(k)s)", {"k": ADVISORY_LOCK_KEY})
            try:
                assert analyze(engine, max_age_s=1e-6) is False  # another one is at it
            finally:
                other.exec_driver_sql("SELECT pg_advisory_unlock(%(k)s)", {"k": ADVISORY_LOCK_KEY})
            other.commit()


def test_connection_audience_and_field_flag_rows_of_a_snapshot(engine, claimed):
    from audience_sync.store.schema import audiences, connections, field_flags

    with engine.begin() as conn:
        conn.execute(
            connections.insert(),
            [
                {
                    "account_id": account,
                    "account_settings": {"restApiKey": f"k{account}"},
                    "settings_fingerprint": f"fp{account}",
                    "state": "active",
                    "settings_errors": [],
                    "workspace_id": workspace,
                    "created_at": 0.0,
                    "updated_at": 0.0,
                }
                for account, workspace in ((1, claimed), (2, None))
            ],
        )
        conn.execute(
            audiences.insert(),
            [
                {
                    "account_id": account,
                    "audience_id": audience,
                    "name": f"A{audience}",
                    "state": state,
                    "cleanup": cleanup,
                    "created_at": 0.0,
                    "updated_at": 0.0,
                }
                for account, audience, state, cleanup in (
                    (1, 7, "active", False),
                    (1, 8, "removed", True),
                    (1, 9, "active", False),
                    (2, 7, "active", False),
                )
            ],
        )
        conn.execute(
            field_flags.insert(),
            [
                {
                    "workspace_id": ws,
                    "external_id": e,
                    "field": "email",
                    "fingerprint": f"d-{e}",
                    "flag": "invalid_email",
                    "flagged_at": 1.0,
                }
                for ws, e in ((claimed, "u0"), (claimed, "u2"), (claimed + 1, "u0"))
            ],
        )
        statements = bulk.of(conn)
        connection_rows = statements.connection_rows(conn, workspace_id=claimed)
        audience_rows = statements.audience_rows(conn, accounts=[1], audience_ids=[7, 8, 10])
        no_accounts = statements.audience_rows(conn, accounts=[], audience_ids=[7])
        flag_rows = statements.field_flag_rows(conn, workspace_id=claimed, ids=["u0", "u1"])
    assert connection_rows == [(1, {"restApiKey": "k1"}, "fp1", "active")]
    assert sorted(audience_rows) == [(1, 7, "A7", "active", False), (1, 8, "A8", "removed", True)]
    assert no_accounts == []
    assert flag_rows == [("u0", "email", "d-u0", "invalid_email")]


def test_driver_statements_run_in_the_connections_transaction_and_raise_sqlalchemy_errors(engine):
    from audience_sync.store.bulk.driver import execute, fetch_all

    mark = "?" if engine.dialect.name == "sqlite" else "%s"
    with engine.connect() as conn:
        execute(conn, "CREATE TABLE driver_probe (n INTEGER)", ())
        # Begun as SQLAlchemy would: rolled back with the connection.
        assert conn.in_transaction()
        execute(conn, f"INSERT INTO driver_probe (n) VALUES ({mark})", (7,))
        assert fetch_all(conn, "SELECT n FROM driver_probe", ()) == [(7,)]
        with pytest.raises(sa.exc.DBAPIError):
            fetch_all(conn, "SELECT n FROM no_such_table", ())
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("driver_probe")


def test_counts_and_datapoints_are_added_to_the_rows_of_their_keys(engine):
    from audience_sync.core.states import DeliveryCounter
    from audience_sync.store.schema import counters, datapoints

    with engine.begin() as conn:
        statements = bulk.of(conn)
        statements.add_counts(
            conn,
            rows=[("2026-01-01", "workspace:1", DeliveryCounter.UNCHANGED, 2), ("d", "s", "r", 1)],
        )
        statements.add_counts(conn, rows=[("2026-01-01", "workspace:1", "unchanged", 5)])
        statements.add_counts(conn, rows=[])
        statements.add_datapoints(
            conn, rows=[("2026-01-01", 1, 10, 7, 3), ("2026-01-01", 1, 10, 8, 1)]
        )
        statements.add_datapoints(conn, rows=[("2026-01-01", 1, 10, 7, 4)])
        statements.add_datapoints(conn, rows=[])
    with engine.connect() as conn:
        counted = {tuple(r[:3]): r[3] for r in conn.execute(sa.select(counters))}
        points = {tuple(r[:4]): r[4] for r in conn.execute(sa.select(datapoints))}
    assert counted == {("2026-01-01", "workspace:1", "unchanged"): 7, ("d", "s", "r"): 1}
    assert points == {("2026-01-01", 1, 10, 7): 7, ("2026-01-01", 1, 10, 8): 1}


def test_a_tally_adds_its_data_points_and_counts_as_the_two_statements_would(engine):
    """The sender's tally (delivery/tally.py): one statement on PostgreSQL, two on SQLite."""
    from audience_sync.delivery.tally import Tally
    from audience_sync.store.schema import counters, datapoints

    day_seconds = 86_400 * 20_000  # 2024-10-04, and the next day
    for n in range(2):
        tally = Tally()
        tally.count("workspace:1", {"delivered": 2, "unchanged": 0}, now=day_seconds)
        tally.count("workspace:1", {"delivered": 1}, now=day_seconds + 86_400)
        tally.charge(1, {(10, 7): 3, (10, 8): 0}, now=day_seconds)
        tally.charge(2, {(11, 7): n + 1}, now=day_seconds + 86_400)
        with engine.begin() as conn:
            # The second one as a sender's last statement: on PostgreSQL its COMMIT goes
            # with it, and the transaction's own commit then has nothing left to do.
            tally.write(conn, last=n == 1)
    with engine.begin() as conn:
        Tally().write(conn, last=True)  # nothing to add
    with engine.connect() as conn:
        counted = {tuple(r[:3]): r[3] for r in conn.execute(sa.select(counters))}
        points = {tuple(r[:4]): r[4] for r in conn.execute(sa.select(datapoints))}
    assert counted == {
        ("2024-10-04", "workspace:1", "delivered"): 4,
        ("2024-10-05", "workspace:1", "delivered"): 2,
    }
    assert points == {("2024-10-04", 1, 10, 7): 6, ("2024-10-05", 2, 11, 7): 3}


def test_an_idle_postgresql_connection_the_server_closed_is_replaced_at_checkout(
    engine, monkeypatch
):
    """Connections are pinged only after sitting idle (store.engine.IDLE_PING_S)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's pool")
    from audience_sync.store import engine as engines

    monkeypatch.setattr(engines, "IDLE_PING_S", 0.0)
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    killer = engines.create_engine(engine.url.render_as_string(hide_password=False))
    with killer.connect() as conn:
        conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid})
    killer.dispose()
    time.sleep(0.05)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid


def test_a_claim_leases_due_unleased_rows_oldest_first_in_one_statement(engine):
    """bulk.postgresql_delivery.claim and bulk.sqlite.claim: the candidates and the lease as
    one statement."""
    from audience_sync.store.bulk import postgresql_delivery

    statement = (
        postgresql_delivery.claim if engine.dialect.name == "postgresql" else bulk.sqlite.claim
    )

    with engine.begin() as conn:
        ws = conn.execute(
            workspaces.insert()
            .values(endpoint="http://x", key_fingerprint="f", state="active", created_at=0)
            .returning(workspaces.c.id)
        ).scalar_one()
        outbox.enqueue(conn, ws, ["late"], now=5)
        outbox.enqueue(conn, ws, ["early", "leased", "later"], now=1)
        outbox.enqueue(conn, ws, ["future"], now=100)
        conn.execute(
            outbox_table.update()
            .where(outbox_table.c.external_id == "leased")
            .values(claimed_by="b", claimed_until=50.0)
        )
        conn.execute(
            outbox_table.update().where(outbox_table.c.external_id == "later").values(due_at=3)
        )

    def claim(**options):
        with engine.begin() as conn:
            return statement(
                conn,
                **(
                    {
                        "worker_id": "a",
                        "now": 10.0,
                        "until": 20.0,
                        "limit": 10,
                        "pending": "pending",
                        "active": "active",
                        "workspace_id": None,
                    }
                    | options
                ),
            )

    assert sorted(claim(limit=2)) == [
        (ws, "early", 1, 0, None, None),
        (ws, "later", 1, 0, None, None),
    ]
    assert [e for _, e, *_ in claim()] == ["late"]  # the others are leased until 20
    rows = _rows(engine)
    assert (rows["late"].claimed_by, rows["late"].claimed_until) == ("a", 20.0)
    assert rows["late"].claimed_generation == rows["late"].generation
    assert (rows["leased"].claimed_by, rows["future"].claimed_by) == ("b", None)
    assert claim(worker_id="c", now=25.0, workspace_id=ws + 1) == []
    assert {e for _, e, *_ in claim(worker_id="c", now=25.0)} == {"early", "later", "late"}


def test_postgresql_finish_acknowledged_finishes_and_acknowledges_only_the_held(engine, claimed):
    """bulk.postgresql_delivery.finish_acknowledged: outbox DELETE, release and acknowledged
    upsert in one statement."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's statement")
    from audience_sync.store.bulk import postgresql_delivery
    from audience_sync.store.schema import braze_users

    def row(external_id, attributes):
        return (claimed, external_id, 42.0, bulk.json_text(attributes), '["f"]', 7.0, "accepted")

    with engine.begin() as conn:
        outbox.enqueue(conn, claimed, ["u1"], now=3)  # changed while in flight
        owned = postgresql_delivery.finish_acknowledged(
            conn,
            worker_id="a",
            now=9.0,
            rows=[row("u0", {"k": 0}), row("u1", {"k": 1}), row("u5", {"k": 5})],
        )
    assert owned == {(claimed, "u0"), (claimed, "u1")}
    rows = _rows(engine)
    assert "u0" not in rows
    assert (rows["u1"].claimed_by, rows["u1"].due_at, rows["u1"].in_flight) == (None, 42.0, None)
    assert rows["u5"].claimed_by == "b"
    with engine.connect() as conn:
        acked = {
            r.external_id: (r.attributes, r.flags, r.last_write_at, r.last_outcome_at)
            for r in conn.execute(sa.select(braze_users))
        }
    assert acked == {"u0": ({"k": 0}, ["f"], 7.0, 9.0), "u1": ({"k": 1}, ["f"], 7.0, 9.0)}


def test_a_snapshot_read_in_one_round_trip_equals_the_one_read_step_by_step(engine, claimed):
    """On PostgreSQL load_snapshot reads with bulk.postgresql_delivery.snapshot_all unless the
    accounts are given; both read the same snapshot (on SQLite, the same code)."""
    from audience_sync.store.schema import (
        audiences,
        braze_users,
        connections,
        field_flags,
        memberships,
        users,
    )
    from audience_sync.store.snapshot import load_snapshot

    with engine.begin() as conn:
        for account, state in ((1, "active"), (2, "paused")):
            conn.execute(
                connections.insert().values(
                    account_id=account,
                    account_settings={"k": str(account)},
                    settings_fingerprint=f"fp{account}",
                    state=state,
                    settings_errors=[],
                    workspace_id=claimed,
                    created_at=0,
                    updated_at=0,
                )
            )
        for account, audience, name, state, cleanup in (
            (1, 7, "Seven", "active", False),
            (1, 8, "Gone", "removed", True),
            (2, 9, "Nine", "active", False),
        ):
            conn.execute(
                audiences.insert().values(
                    account_id=account,
                    audience_id=audience,
                    name=name,
                    state=state,
                    cleanup=cleanup,
                    created_at=0,
                    updated_at=0,
                )
            )
        for account, external_id, email in ((1, "u0", "a@x"), (2, "u0", None), (1, "u2", None)):
            conn.execute(
                users.insert().values(
                    account_id=account,
                    external_id=external_id,
                    email=email,
                    push_tokens=["t"] if email else None,
                    updated_at=2.0,
                )
            )
        for account, external_id, audience, member in (
            (1, "u0", 7, True),
            (1, "u0", 8, True),
            (2, "u0", 9, False),
            (1, "u1", 7, True),
            (1, "u1", 77, True),  # an audience without its row
        ):
            conn.execute(
                memberships.insert().values(
                    account_id=account,
                    external_id=external_id,
                    audience_id=audience,
                    is_member=member,
                    changed_at=1.0,
                )
            )
        conn.execute(
            braze_users.insert().values(
                workspace_id=claimed,
                external_id="u1",
                attributes={"k": [1]},
                flags=["f"],
                last_write_at=4.0,
                updated_at=1.0,
            )
        )
        conn.execute(
            field_flags.insert().values(
                workspace_id=claimed,
                external_id="u0",
                field="email",
                fingerprint="d",
                flag="invalid_email",
                flagged_at=1.0,
            )
        )

    ids = ["u0", "u1", "u2", "none"]
    with engine.connect() as conn:
        every = load_snapshot(conn, claimed, ids, all_connections=True)
        assert every == load_snapshot(conn, claimed, ids, account_ids=[1, 2])
        active = load_snapshot(conn, claimed, ids)
        assert active == load_snapshot(conn, claimed, ids, account_ids=[1])
    assert {d.account_id for d in every.desired["u0"]} == {1, 2}
    assert {d.account_id for d in active.desired["u0"]} == {1}
    assert [m for d in active.desired["u0"] for m in d.memberships] == [(7, "Seven", True)]
    assert every.acknowledged["u1"].last_write_at == 4.0
    assert [f.flag for f in every.field_flags["u0"]] == ["invalid_email"]
    assert len(every.connections) == 2


def test_postgresql_text_array_literal_round_trips_any_external_id(engine):
    """bulk.postgresql_delivery.text_array: the snapshot's ids, one literal for its reads."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's statement")
    from audience_sync.store.bulk.driver import fetch_all
    from audience_sync.store.bulk.postgresql_delivery import text_array

    ids = ['a"b', "c\\d", "e,f", "{g}", " h ", "NULL", "é 🙂", "", "x'y"]
    with engine.connect() as conn:
        for values in (ids, [], ["one"]):
            [(got,)] = fetch_all(conn, "SELECT %(a)s::text[]", {"a": text_array(values)})
            assert got == values
