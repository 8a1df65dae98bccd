"""``cleanup_removed`` (SPEC §7, §4.6): a removed audience's attributes are cleared from every
member through the normal sender, paged by the job, while the subscription request itself only
leaves a record; renames and moves to another workspace go the same way."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.jobs.cleanup_removed import SPEC as CLEANUP
from audience_sync.jobs.runner import run_job
from audience_sync.store.counters import totals
from audience_sync.store.schema import connections, outbox, pending_cleanups
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import FAST, REST_KEY, connection_settings, make_sender
from tests.support import drain, membership, post, profile, subscription

ACCOUNT = 8001
MODE = "string+array+per_segment"
MEMBERS = 300


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}) as server:
        yield server


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def setup_members(make_runtime, braze, auth_headers, *, cleanup: str):
    runtime = make_runtime(**FAST, **{"jobs.cleanup_removed.users_per_run": 120})
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, MODE, cleanupOnRemove=cleanup)
    post(client, subscription(ACCOUNT, 301, "Summer", **settings), auth_headers)
    post(client, subscription(ACCOUNT, 302, "Winter", **settings), auth_headers)
    profiles = [
        profile(f"m{n}", [(301, "Summer", "add"), (302, "Winter", "add")]) for n in range(MEMBERS)
    ]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    sender = make_sender(runtime)
    drain(sender, runtime.engine)
    assert braze.users["m0"] == {
        "SegmentMembership": "'301','302'",
        "SegmentMembershipArray": ["301", "302"],
        "In Summer": True,
        "In Winter": True,
    }
    return runtime, client, sender, settings


def run_cleanup_until_done(runtime) -> list[int]:
    """Scheduled runs until nothing is left; returns users enqueued per run."""
    per_run = []
    while True:
        report = run_job(runtime, CLEANUP, holder="test", force=True)
        assert report is not None and report.error is None
        per_run.append(report.result.counts["users_enqueued"])
        if not per_run[-1]:
            return per_run


def test_remove_with_cleanup_clears_every_member_and_the_request_marks_nobody(
    make_runtime, braze, auth_headers
):
    runtime, client, sender, settings = setup_members(
        make_runtime, braze, auth_headers, cleanup="true"
    )
    assert count(runtime.engine, outbox) == 0
    # A one-member audience, to compare the request's work with the 300-member one's.
    post(
        client,
        membership(ACCOUNT, [profile("m0", [(303, "Tiny", "add")])], **settings),
        auth_headers,
    )
    drain(sender, runtime.engine)

    def statements_of(message) -> int:
        executed = []

        def listener(*_args) -> None:
            executed.append(1)

        sa.event.listen(runtime.engine, "before_cursor_execute", listener)
        try:
            post(client, message, auth_headers)
        finally:
            sa.event.remove(runtime.engine, "before_cursor_execute", listener)
        return len(executed)

    tiny = statements_of(subscription(ACCOUNT, 303, "Tiny", "remove", **settings))
    large = statements_of(subscription(ACCOUNT, 301, "Summer", "remove", **settings))

    # The request did O(1) work: the same statements whatever the audience's size, one
    # pending-cleanup record each, no outbox row.
    assert large == tiny
    assert count(runtime.engine, outbox) == 0
    assert count(runtime.engine, pending_cleanups) == 2

    per_run = run_cleanup_until_done(runtime)
    assert per_run[:3] == [120, 120, 61]  # paged: jobs.cleanup_removed.users_per_run
    drain(sender, runtime.engine)
    for n in range(MEMBERS):
        assert braze.users[f"m{n}"] == {
            "SegmentMembership": "'302'",
            "SegmentMembershipArray": ["302"],
            "In Winter": True,
        }


def test_remove_without_cleanup_leaves_the_attributes(make_runtime, braze, auth_headers):
    runtime, client, sender, settings = setup_members(
        make_runtime, braze, auth_headers, cleanup="false"
    )
    before = dict(braze.users)
    post(client, subscription(ACCOUNT, 301, "Summer", "remove", **settings), auth_headers)
    assert count(runtime.engine, pending_cleanups) == 0
    assert run_cleanup_until_done(runtime) == [0]
    drain(sender, runtime.engine)
    assert braze.users == before


def test_rename_moves_in_name_for_every_member(make_runtime, braze, auth_headers):
    runtime, client, sender, settings = setup_members(
        make_runtime, braze, auth_headers, cleanup="false"
    )
    post(client, subscription(ACCOUNT, 301, "Endless Summer", "update", **settings), auth_headers)
    assert count(runtime.engine, outbox) == 0
    run_cleanup_until_done(runtime)
    drain(sender, runtime.engine)
    assert braze.users["m7"] == {
        "SegmentMembership": "'301','302'",
        "SegmentMembershipArray": ["301", "302"],
        "In Endless Summer": True,
        "In Winter": True,
    }


@pytest.mark.parametrize("cleanup", ["false", "true"])
def test_a_moved_connection_is_resent_in_full_and_its_old_rows_settled(
    make_runtime, braze, auth_headers, cleanup
):
    runtime, client, sender, settings = setup_members(
        make_runtime, braze, auth_headers, cleanup=cleanup
    )
    # Changes accepted but not yet delivered to the old workspace...
    profiles = [profile(f"m{n}", [(302, "Winter", "delete")]) for n in range(10)]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    with runtime.engine.connect() as conn:
        old_ws = conn.execute(sa.select(connections.c.workspace_id)).scalar_one()
    assert count(runtime.engine, outbox) == 10

    with FakeBraze(api_keys={REST_KEY}) as other:
        moved = connection_settings(other, MODE, cleanupOnRemove=cleanup)
        post(client, membership(ACCOUNT, [], **moved), auth_headers)
        assert count(runtime.engine, outbox) == 10  # the request marked nobody
        run_cleanup_until_done(runtime)
        with runtime.engine.connect() as conn:
            in_old = outbox.c.workspace_id == old_ws
            left = conn.execute(
                sa.select(sa.func.count()).select_from(outbox).where(in_old)
            ).scalar_one()
            counted = totals(conn, scope=f"workspace:{old_ws}")
        assert left == 0  # settled, not re-checked every minute forever
        reason = "connection_moved_cleared" if cleanup == "true" else "connection_moved_dropped"
        assert counted[(f"workspace:{old_ws}", reason)] == 10
        drain(sender, runtime.engine)
        assert len(other.users) == MEMBERS
        # In full: every attribute written there ("In Winter" = false needs no write: never
        # true in that workspace).
        assert other.users["m0"] == {
            "SegmentMembership": "'301'",
            "SegmentMembershipArray": ["301"],
            "In Summer": True,
        }
        assert other.users["m100"]["SegmentMembership"] == "'301','302'"
    if cleanup == "true":
        assert all(held == {} for held in braze.users.values())  # nothing of ours left there
    else:
        assert braze.users["m100"]["SegmentMembership"] == "'301','302'"  # left as it was


def test_a_left_workspace_that_refuses_the_old_key_is_given_up_counted(
    make_runtime, braze, auth_headers
):
    runtime, client, sender, _settings = setup_members(
        make_runtime, braze, auth_headers, cleanup="true"
    )
    with runtime.engine.connect() as conn:
        old_ws = conn.execute(sa.select(connections.c.workspace_id)).scalar_one()
    braze.configure(auth_fail=True)  # the old key was revoked along with the move
    with FakeBraze(api_keys={REST_KEY}) as other:
        post(
            client,
            membership(ACCOUNT, [], **connection_settings(other, MODE, cleanupOnRemove="true")),
            auth_headers,
        )
        run_cleanup_until_done(runtime)
        drain(sender, runtime.engine)
        assert len(other.users) == MEMBERS
    with runtime.engine.connect() as conn:
        counted = totals(conn, scope=f"workspace:{old_ws}")
        record = conn.execute(sa.select(pending_cleanups).order_by(pending_cleanups.c.id)).all()[-1]
    assert counted[(f"workspace:{old_ws}", "old_workspace_refused")] == MEMBERS
    assert record.done_at is not None
    assert record.old_target is None  # the old key is not kept once the record is settled


def test_an_unavailable_old_workspace_does_not_hold_back_the_new_one(
    make_runtime, braze, auth_headers
):
    runtime, client, sender, _settings = setup_members(
        make_runtime, braze, auth_headers, cleanup="true"
    )
    braze.configure(rate_5xx=1.0)
    with FakeBraze(api_keys={REST_KEY}) as other:
        post(
            client,
            membership(ACCOUNT, [], **connection_settings(other, MODE, cleanupOnRemove="true")),
            auth_headers,
        )
        run_cleanup_until_done(runtime)
        drain(sender, runtime.engine)
        assert len(other.users) == MEMBERS  # resent in full while the old one is away
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(pending_cleanups.c.done_at)).scalar_one() is None
    braze.configure(rate_5xx=0.0)
    report = run_job(runtime, CLEANUP, holder="test", force=True)
    assert report is not None
    assert report.result.counts["old_cleared"] == MEMBERS
    assert report.result.counts["cleanups_done"] == 1
    assert all(held == {} for held in braze.users.values())
    with runtime.engine.connect() as conn:
        record = conn.execute(sa.select(pending_cleanups)).one()
    assert record.done_at is not None
    assert record.old_target is None
