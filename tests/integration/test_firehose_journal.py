"""The Firehose journal (SPEC §3.1, §4.1, §9): a membership change is durable and answered once
it is in the journal; a worker's applier turns it into users, memberships and outbox marks, in
arrival order, exactly once, and one entry that cannot be applied never stops the others."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.core.states import IntakeCounter
from audience_sync.firehose.applier import apply_journal, drain_journal
from audience_sync.firehose.journal_applier import JournalApplier
from audience_sync.store import journal, journal_file
from audience_sync.store.activity import backlog
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.schema import firehose_journal
from tests.support import membership, post, profile

ACCOUNT = 5151
SETTINGS = {
    "apiKey": "app",
    "restApiKey": "rest-key",
    "brazeInstance": "US-03",
    "sendSegmentsAs": "string",
    "externalIdentityType": "customer",
}


@pytest.fixture
def deferred(make_runtime):
    """A runtime whose intake only journals, and a test client on it."""
    runtime = make_runtime(firehose__apply_in_request=False)
    return runtime, create_app(runtime=runtime).test_client()


def _rows(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def _memberships(engine: sa.Engine) -> dict[tuple[str, int], bool]:
    return {
        (e, a): bool(m)
        for e, a, m in _rows(engine, "SELECT external_id, audience_id, is_member FROM memberships")
    }


def _journal_size(engine: sa.Engine) -> int:
    return _rows(journal_engine(engine), "SELECT COUNT(*) FROM firehose_journal")[0][0]


@contextlib.contextmanager
def _counting_commits(engine: sa.Engine) -> t.Iterator[dict[str, int]]:
    """``{"n": commits}`` of ``engine`` while the block runs."""
    commits = {"n": 0}

    def count(conn: sa.Connection) -> None:
        commits["n"] += 1

    sa.event.listen(engine, "commit", count)
    try:
        yield commits
    finally:
        sa.event.remove(engine, "commit", count)


def _enter(user: str, audience: int = 1, **kwargs) -> dict:
    return membership(ACCOUNT, [profile(user, [(audience, "VIPs", "add")])], **SETTINGS, **kwargs)


def test_the_answer_comes_from_the_journal_and_the_applier_makes_the_state(deferred, auth_headers):
    runtime, client = deferred
    engine = runtime.engine
    post(client, _enter("u1"), auth_headers)
    post(client, _enter("u2"), auth_headers)

    assert _journal_size(engine) == 2
    assert _memberships(engine) == {}
    assert _rows(engine, "SELECT COUNT(*) FROM outbox")[0][0] == 0
    with engine.connect() as conn:
        waiting = backlog(conn, now=time.time())
    assert waiting.firehose_waiting == 2 and waiting.firehose_oldest_at is not None

    assert drain_journal(engine, coalesce_s=0.0) == 2

    assert _memberships(engine) == {("u1", 1): True, ("u2", 1): True}
    assert sorted(e for (e,) in _rows(engine, "SELECT external_id FROM outbox")) == ["u1", "u2"]
    assert _journal_size(engine) == 0
    applied = _rows(
        engine,
        f"SELECT SUM(count) FROM counters WHERE reason = '{IntakeCounter.MEMBERSHIPS_APPLIED}'",
    )
    assert applied[0][0] == 2


def test_a_retried_message_waiting_in_the_journal_is_a_duplicate(deferred, auth_headers):
    runtime, client = deferred
    message = _enter("u1")
    post(client, message, auth_headers)
    post(client, message, auth_headers)
    assert _journal_size(runtime.engine) == 1


def test_entries_apply_in_arrival_order_and_a_late_older_message_does_not_win(
    deferred, auth_headers
):
    runtime, client = deferred
    now_ms = int(time.time() * 1000)
    exit_u1 = membership(ACCOUNT, [profile("u1", [(1, "VIPs", "delete")])], **SETTINGS)
    post(client, _enter("u1", timestamp_ms=now_ms), auth_headers)
    post(client, {**exit_u1, "timestamp_ms": now_ms}, auth_headers)  # same time: arrival wins
    post(client, _enter("u2", timestamp_ms=now_ms), auth_headers)
    # mParticle retries an older message for u2 late: the newer state stays.
    late = membership(ACCOUNT, [profile("u2", [(1, "VIPs", "delete")])], **SETTINGS)
    post(client, {**late, "timestamp_ms": now_ms - 60_000}, auth_headers)

    while apply_journal(runtime.engine, coalesce_s=0.0, max_profiles=1):
        pass

    assert _memberships(runtime.engine) == {("u1", 1): False, ("u2", 1): True}


def test_entries_applied_in_one_round_leave_what_applying_them_one_by_one_leaves(
    deferred, auth_headers
):
    """On PostgreSQL a round's entries of one account are written as one statement per table
    (merged first); the state and the counts are those of applying them in turn."""
    runtime, client = deferred
    engine = runtime.engine
    ios = {**SETTINGS, "apiKeyOperatingSystem": "ios"}
    now_ms = int(time.time() * 1000)

    def send(profiles: list[dict], timestamp_ms: int) -> None:
        post(client, membership(ACCOUNT, profiles, timestamp_ms=timestamp_ms, **ios), auth_headers)

    both = [(1, "VIPs", "add"), (2, "Fans", "add")]
    send([profile("u1", both, email="a@example.com", push_tokens=["t1"])], now_ms)
    # Same time: the later entry wins; a new email, mpid and token.
    send(
        [
            profile(
                "u1", [(1, "VIPs", "delete")], email="b@example.com", mpid="7", push_tokens=["t2"]
            )
        ],
        now_ms,
    )
    # Older: its membership loses, its token (sent again) becomes the newest.
    send([profile("u1", [(2, "Fans", "delete")], push_tokens=["t1"])], now_ms - 60_000)
    send([profile("u2", [(3, "First name", "add")])], now_ms)
    send([profile("u2", [(3, "Second name", "add")], email="c@example.com")], now_ms + 1)

    assert apply_journal(engine, coalesce_s=0.0) == 5  # one round
    assert _journal_size(engine) == 0
    assert _memberships(engine) == {("u1", 1): False, ("u1", 2): True, ("u2", 3): True}
    users = {
        e: (email, mpid, tokens if isinstance(tokens, list) else json.loads(tokens))
        for e, email, mpid, tokens in _rows(
            engine, "SELECT external_id, email, mpid, push_tokens FROM users"
        )
    }
    assert users == {
        "u1": ("b@example.com", "7", ["t2", "t1"]),
        "u2": ("c@example.com", None, []),
    }
    assert _rows(engine, "SELECT name FROM audiences WHERE audience_id = 3") == [("First name",)]
    assert sorted(e for (e,) in _rows(engine, "SELECT external_id FROM outbox")) == ["u1", "u2"]
    applied = _rows(
        engine,
        f"SELECT SUM(count) FROM counters WHERE reason = '{IntakeCounter.MEMBERSHIPS_APPLIED}'",
    )
    assert applied[0][0] == 6


def test_appliers_of_several_workers_apply_every_entry_once(deferred, auth_headers):
    """PostgreSQL: every worker runs an applier; they take turns (an advisory lock), each
    round reading the entries the one before left, so none is applied twice or waits for
    nothing. SQLite has one applier."""
    runtime, client = deferred
    engine = runtime.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("one applier on SQLite")
    for n in range(30):
        post(client, _enter(f"w{n}"), auth_headers)
    applied: list[int] = []
    errors: list[BaseException] = []

    def applier() -> None:
        try:
            while n := apply_journal(engine, coalesce_s=0.0, max_profiles=1):
                applied.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=applier) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(applied) == 30
    assert _journal_size(engine) == 0
    assert _memberships(engine) == {(f"w{n}", 1): True for n in range(30)}
    counted = _rows(
        engine,
        f"SELECT SUM(count) FROM counters WHERE reason = '{IntakeCounter.MEMBERSHIPS_APPLIED}'",
    )
    assert counted[0][0] == 30


def test_an_entry_left_by_a_killed_process_is_applied_by_the_next_one(
    deferred, make_runtime, auth_headers
):
    runtime, client = deferred
    post(client, _enter("u1"), auth_headers)
    runtime.engine.dispose()  # the accepting process is gone; its entry is durable

    successor = make_runtime(firehose__apply_in_request=False)
    assert drain_journal(successor.engine, coalesce_s=0.0) == 1
    assert _memberships(successor.engine) == {("u1", 1): True}


def test_the_applier_thread_applies_within_moments(deferred, auth_headers):
    runtime, client = deferred
    stop = threading.Event()
    applier = JournalApplier(runtime.engine, coalesce_s=0.0, stop=stop).start()
    try:
        post(client, _enter("u1"), auth_headers)
        deadline = time.monotonic() + 10
        while _memberships(runtime.engine) != {("u1", 1): True}:
            assert time.monotonic() < deadline, "the applier did not apply the entry"
            time.sleep(0.02)
    finally:
        stop.set()
        applier.join(5)
    assert _journal_size(runtime.engine) == 0


def test_one_entry_that_cannot_be_applied_does_not_stop_the_others(deferred, auth_headers, caplog):
    runtime, client = deferred
    engine = runtime.engine
    post(client, _enter("u1"), auth_headers)
    post(client, _enter("u2"), auth_headers)
    post(client, _enter("u3"), auth_headers)
    with journal_engine(engine).begin() as conn:
        second = sorted(conn.execute(sa.select(firehose_journal.c.seq)).scalars())[1]
        conn.execute(
            firehose_journal.update()
            .where(firehose_journal.c.seq == second)
            .values(plan=b"not a plan")
        )

    applier = JournalApplier(engine, coalesce_s=0.0, stop=threading.Event())
    with caplog.at_level(logging.ERROR, logger="audience_sync.firehose.applier"):
        for _ in range(6):
            applier.run_once()

    assert _memberships(engine) == {("u1", 1): True, ("u3", 1): True}
    # Kept, not dropped: it stays in the journal (status shows it waiting) and is logged.
    assert _rows(journal_engine(engine), "SELECT seq FROM firehose_journal") == [(second,)]
    assert any(getattr(r, "action", None) == "firehose_apply_failed" for r in caplog.records)


@pytest.mark.parametrize(
    "plan_users",
    [
        [],
        [("u1", None, None, [])],
        [("ü-ñ", "a@example.com", "-42", ["tok1", "tok2"])],
    ],
)
def test_plans_come_back_from_the_journal_as_they_went_in(plan_users):
    from collections import Counter

    from audience_sync.core.membership import MembershipPlan, UserUpdate

    plan = MembershipPlan(
        users={
            e: UserUpdate(external_id=e, email=m, mpid=p, push_tokens=list(t))
            for e, m, p, t in plan_users
        },
        memberships={(e, 7): i % 2 == 0 for i, (e, *_rest) in enumerate(plan_users)},
        audience_names={7: "Seven", 2**40: "Big"},
        unresolved=Counter({"no_external_id": 3}),
    )
    assert journal.decode_plan(journal.encode_plan(plan)) == plan


def test_what_waits_in_the_journal_is_shown_by_status_the_dashboard_and_metrics(
    make_runtime, auth_headers
):
    from tests.integration.admin_helpers import ADMIN_SETTINGS, BEARER

    runtime = make_runtime(firehose__apply_in_request=False, **ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    post(client, _enter("u1"), auth_headers)
    post(client, _enter("u2"), auth_headers)

    status = client.get("/api/v1/status", headers=BEARER).get_json()
    assert status["backlog"]["firehose_waiting"] == 2
    assert status["backlog"]["firehose_oldest_age_s"] >= 0
    html = client.get("/", headers=BEARER).get_data(as_text=True)
    assert 'id="kpi-firehose-waiting">2<' in html
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "audience_sync_firehose_waiting_messages 2.0" in metrics

    drain_journal(runtime.engine, coalesce_s=0.0)
    status = client.get("/api/v1/status", headers=BEARER).get_json()
    assert status["backlog"]["firehose_waiting"] == 0
    assert status["backlog"]["firehose_oldest_age_s"] is None


def test_a_crash_inside_a_large_entry_applies_it_again_and_counts_it_once(
    deferred, auth_headers, monkeypatch
):
    """On SQLite, with intake requests waiting, a large entry is applied in several
    transactions and deleted with the last; a failure before that leaves the entry (and the
    parts before), and applying it again gives the same state, counted once."""
    from audience_sync.firehose import applier

    monkeypatch.setattr(applier, "priority_writer_waiting", lambda engine: True)
    runtime, client = deferred
    engine = runtime.engine
    users = [f"big-{n}" for n in range(250)]
    message = membership(
        ACCOUNT, [profile(u, [(1, "VIPs", "add"), (2, "Fans", "add")]) for u in users], **SETTINGS
    )
    post(client, message, auth_headers)

    # The entry's end (deleted with its effects, or marked applied when the journal has a file
    # of its own) fails once: as if the process died before the last part committed.
    calls = {"n": 0}

    def failing(real):
        def wrapper(conn, seqs, **kwargs):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("killed before the last part committed")
            return real(conn, seqs, **kwargs)

        return wrapper

    monkeypatch.setattr(journal, "take", failing(journal.take))
    monkeypatch.setattr(journal_file, "mark_applied", failing(journal_file.mark_applied))
    with pytest.raises(RuntimeError):
        apply_journal(engine, coalesce_s=0.0)
    assert _journal_size(engine) == 1  # kept
    if engine.dialect.name == "sqlite":  # the parts before the last were committed alone
        part = applier.SQLITE_USERS_PER_PART
        last_part = len(users) % part or part
        assert len(_memberships(engine)) == 2 * (len(users) - last_part)
    else:  # one transaction per round on PostgreSQL
        assert _memberships(engine) == {}

    assert apply_journal(engine, coalesce_s=0.0) == 1
    assert _journal_size(engine) == 0
    assert _memberships(engine) == {(u, a): True for u in users for a in (1, 2)}
    applied = _rows(
        engine,
        f"SELECT SUM(count) FROM counters WHERE reason = '{IntakeCounter.MEMBERSHIPS_APPLIED}'",
    )
    assert applied[0][0] == 500


def test_without_a_waiting_intake_a_round_is_one_transaction(deferred, auth_headers, monkeypatch):
    from audience_sync.firehose import applier

    monkeypatch.setattr(applier, "SQLITE_SLICE_S", 60.0)  # the round fits in one slice
    runtime, client = deferred
    engine = runtime.engine
    for n in range(2):
        users = [f"m{n}-{i}" for i in range(250)]
        post(
            client,
            membership(ACCOUNT, [profile(u, [(1, "VIPs", "add")]) for u in users], **SETTINGS),
            auth_headers,
        )
    with _counting_commits(engine) as commits:
        assert apply_journal(engine, coalesce_s=0.0, max_profiles=500) == 2
    # With the journal in a file of its own, a second (tiny) one forgets the applied marks.
    assert commits["n"] == (2 if journal_file.is_separate(engine) else 1)
    assert len(_memberships(engine)) == 500


def test_on_sqlite_a_long_round_commits_per_slice_and_lets_other_writers_in(
    deferred, auth_headers, monkeypatch
):
    """The senders wait for SQLite's one write lock too: a round commits after every slice and
    pauses, so a waiting writer gets the lock long before the round is done."""
    from audience_sync.firehose import applier
    from audience_sync.store.transactions import in_transaction

    runtime, client = deferred
    engine = runtime.engine
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no single writer")
    monkeypatch.setattr(applier, "SQLITE_SLICE_S", 0.0)  # a slice is one part
    monkeypatch.setattr(applier, "SQLITE_SLICE_PAUSE_S", 0.05)
    users = [f"s-{i}" for i in range(10 * applier.SQLITE_USERS_PER_PART)]
    post(
        client,
        membership(ACCOUNT, [profile(u, [(1, "VIPs", "add")]) for u in users], **SETTINGS),
        auth_headers,
    )
    round_ = threading.Thread(target=apply_journal, args=(engine,), kwargs={"coalesce_s": 0.0})
    with _counting_commits(engine) as commits:
        round_.start()
        deadline = time.monotonic() + 10
        while not _memberships(engine) and time.monotonic() < deadline:
            time.sleep(0.005)
        # A sender's write, once the round has begun: it gets in before the round ends.
        in_transaction(engine, lambda conn: conn.exec_driver_sql("DELETE FROM counters WHERE 0"))
        applied_when_it_wrote = len(_memberships(engine))
        round_.join(10)
    assert 0 < applied_when_it_wrote < len(users)
    assert len(_memberships(engine)) == len(users) and _journal_size(engine) == 0
    # Ten parts, ten transactions, and the other writer's (plus forgetting the marks).
    assert commits["n"] >= 11


def test_a_request_applying_in_request_applies_its_own_message_and_no_later_one(
    make_runtime, auth_headers
):
    from audience_sync.firehose.applier import drain_journal as real_drain

    runtime = make_runtime(firehose__apply_in_request=False)
    client = create_app(runtime=runtime).test_client()
    post(client, _enter("early"), auth_headers)  # accepted earlier, still waiting
    with journal_engine(runtime.engine).begin() as conn:
        (mine,) = conn.execute(sa.select(firehose_journal.c.seq)).scalars()
    post(client, _enter("later"), auth_headers)  # arrived after it

    assert real_drain(runtime.engine, coalesce_s=0.0, up_to=mine) == 1
    assert _memberships(runtime.engine) == {("early", 1): True}
    assert _journal_size(runtime.engine) == 1


# -- SQLite: the journal in a file of its own (store/journal_file.py) -------------------------


def _separate_only(engine: sa.Engine) -> None:
    if not journal_file.is_separate(engine):
        pytest.skip("the journal shares the database (PostgreSQL)")


def _applied_count(engine: sa.Engine) -> int:
    sql = f"SELECT SUM(count) FROM counters WHERE reason = '{IntakeCounter.MEMBERSHIPS_APPLIED}'"
    return _rows(engine, sql)[0][0] or 0


def test_an_accepted_message_writes_only_the_journal_file(deferred, auth_headers):
    """The acknowledgement never waits for delivery's writes: with the connection's settings
    unchanged, nothing is written to the main database."""
    runtime, client = deferred
    engine = runtime.engine
    _separate_only(engine)
    post(client, _enter("u1"), auth_headers)  # the first one stores the connection
    with _counting_commits(engine) as commits:
        post(client, _enter("u2"), auth_headers)
    assert commits["n"] == 0
    assert _journal_size(engine) == 2
    assert journal_file.journal_path(engine) == engine.url.database + "-intake.db"


def test_an_entry_applied_before_a_crash_but_still_in_the_journal_file_is_not_applied_again(
    deferred, auth_headers, monkeypatch
):
    from audience_sync.firehose import applier

    runtime, client = deferred
    engine = runtime.engine
    _separate_only(engine)
    post(client, _enter("u1"), auth_headers)
    real_delete = applier._delete_applied

    def killed(*args, **kwargs):
        raise RuntimeError("killed after the effects committed, before the journal delete")

    monkeypatch.setattr(applier, "_delete_applied", killed)
    with pytest.raises(RuntimeError):
        apply_journal(engine, coalesce_s=0.0)
    assert _memberships(engine) == {("u1", 1): True}
    assert _journal_size(engine) == 1
    assert _applied_count(engine) == 1

    monkeypatch.setattr(applier, "_delete_applied", real_delete)
    with sa.create_engine(engine.url).connect() as conn:  # a mark is what stops a second apply
        assert conn.execute(sa.text("SELECT COUNT(*) FROM firehose_applied")).scalar() == 1
    assert apply_journal(engine, coalesce_s=0.0) == 1
    assert _journal_size(engine) == 0
    assert _applied_count(engine) == 1  # counted once
    assert _rows(engine, "SELECT COUNT(*) FROM firehose_applied") == [(0,)]  # marks forgotten


def test_an_old_mark_does_not_stop_a_new_entry_of_a_journal_file_made_anew(deferred, auth_headers):
    """Seqs restart at 1 in a new journal file; a mark matches its message id too."""
    runtime, client = deferred
    engine = runtime.engine
    _separate_only(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO firehose_applied (seq, message_id, applied_at) "
                "VALUES (1, 'an-older-message', 0)"
            )
        )
    post(client, _enter("u1"), auth_headers)
    assert apply_journal(engine, coalesce_s=0.0) == 1
    assert _memberships(engine) == {("u1", 1): True}


def test_entries_an_earlier_version_left_in_the_main_database_are_applied(deferred, auth_headers):
    from collections import Counter

    from audience_sync.core.membership import MembershipPlan, UserUpdate

    runtime, _client = deferred
    engine = runtime.engine
    _separate_only(engine)
    post(_client, _enter("u0"), auth_headers)  # the connection, as the earlier version stored it
    plan = MembershipPlan(
        users={"old": UserUpdate(external_id="old", email=None, mpid=None, push_tokens=[])},
        memberships={("old", 1): True},
        audience_names={1: "VIPs"},
        unresolved=Counter(),
    )
    with engine.begin() as conn:
        journal.append(
            conn,
            account_id=ACCOUNT,
            message_id="left-by-an-earlier-version",
            changed_at=time.time(),
            profiles=1,
            plan=journal.encode_plan(plan),
            now=time.time(),
        )
    stop = threading.Event()
    applier = JournalApplier(engine, coalesce_s=0.0, stop=stop).start()
    try:
        deadline = time.monotonic() + 10
        while ("old", 1) not in _memberships(engine) or _journal_size(engine):
            assert time.monotonic() < deadline, "the entries were not applied"
            time.sleep(0.02)
    finally:
        stop.set()
        applier.join(5)
    assert _rows(engine, "SELECT COUNT(*) FROM firehose_journal") == [(0,)]


def test_on_postgresql_the_id_and_the_plan_go_in_one_statement_that_commits_alone(deferred):
    """The acknowledgement's write on PostgreSQL: no transaction around it; a repeated id
    appends nothing."""
    runtime, _ = deferred
    engine = runtime.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite keeps the journal in a file of its own")
    from audience_sync.store.engine import autocommit

    def accept(message_id: str) -> int | None:
        with autocommit(engine) as conn:
            return journal.accept(
                conn,
                account_id=ACCOUNT,
                message_id=message_id,
                message_type="audience_membership_change_request",
                changed_at=1.0,
                profiles=3,
                plan=b'{"u":[],"m":[],"a":[],"x":[]}',
                now=2.0,
            )

    seq = accept("m-1")
    assert isinstance(seq, int)
    assert accept("m-1") is None
    assert _rows(engine, "SELECT seq, message_id, profiles FROM firehose_journal") == [
        (seq, "m-1", 3)
    ]
    assert _rows(engine, "SELECT id FROM firehose_messages") == [("m-1",)]
