"""The Braze audit end to end (SPEC §7): Firehose in through the real app, delivered to a local
Braze-compatible server, tampered with there, then audited with /users/export/ids and repaired
through the normal sender."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audience_sync import create_app
from audience_sync.cli import main
from audience_sync.jobs.audit_braze import Auditor
from audience_sync.store.jobs import recent_runs
from audience_sync.store.reads import list_audiences
from audience_sync.store.schema import braze_users, outbox
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import FAST, REST_KEY, connection_settings, make_sender
from tests.support import drain, membership, post, profile, subscription

ACCOUNT = 7001
MODE = "string+array+per_segment"
NAMES = {201: "Ibiza Dreamers", 202: "Night Owls"}


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}) as server:
        yield server


@pytest.fixture
def synced(make_runtime, braze, auth_headers):
    """Ten users delivered to Braze: u0..u4 in 201, u0..u9 in 202, emails for all."""
    runtime = make_runtime(**FAST, **{"jobs.audit_braze.settle_s": 0})
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, MODE)
    for audience_id, name in NAMES.items():
        post(client, subscription(ACCOUNT, audience_id, name, **settings), auth_headers)
    profiles = [
        profile(
            f"u{n}",
            [(201, NAMES[201], "add")] * (n < 5) + [(202, NAMES[202], "add")],
            email=f"u{n}@example.com",
        )
        for n in range(10)
    ]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    sender = make_sender(runtime)
    drain(sender, runtime.engine)
    desired = json.loads(json.dumps(braze.users))
    braze.reset_stats()
    return runtime, sender, desired


def tamper(braze):
    """One drift of each kind; returns the data points the exact repair costs."""
    braze.drop_attribute("u0", "SegmentMembership")  # 1 point: string rewritten
    braze.flip_boolean("u1", "In Ibiza Dreamers")  # 1 point: true again
    braze.add_array_value("u2", "SegmentMembershipArray", "999")  # 1 point: remove "999"
    braze.delete_user("u3")  # string 1 + array add 2 + In x2 2 + email 1 = 6 points
    braze.set_attribute("u6", "email", "someone-else@example.com")  # 1 point
    return 1 + 1 + 1 + 6 + 1


def test_reconcile_repairs_every_drift_with_exactly_the_differences(synced, braze):
    runtime, sender, desired = synced
    expected_points = tamper(braze)

    auditor = Auditor(runtime.engine, runtime.settings)
    report = auditor.run(full=True)
    auditor.close()

    assert report.users_read == 10
    assert report.users_drifted == 5
    assert report.repairs_queued == 5
    assert report.repair_datapoints == expected_points
    assert report.drift_by_kind == {
        "value_missing": 1,
        "value_changed": 2,
        "array_extra": 1,
        "missing_in_braze": 1,
    }
    drift = {(d["audience_id"], d["kind"]): d for d in report.details()["drift"]}
    assert drift[(201, "value_changed")]["sample"] == ["u1"]
    assert drift[(999, "array_extra")]["sample"] == ["u2"]
    assert drift[(201, "missing_in_braze")]["sample"] == ["u3"]
    assert drift[(202, "missing_in_braze")]["sample"] == ["u3"]
    assert drift[(0, "value_changed")]["sample"] == ["u6"]  # email: no audience
    # u0 lost its string, which holds both audiences
    assert drift[(201, "value_missing")]["sample"] == ["u0"]
    assert drift[(202, "value_missing")]["sample"] == ["u0"]
    assert max(braze.export_ids_requested) <= 50

    drain(sender, runtime.engine)
    assert braze.users == desired
    assert braze.stats()["datapoints"] == expected_points

    # A second audit finds nothing left to repair.
    again = Auditor(runtime.engine, runtime.settings).run(full=True)
    assert again.users_drifted == 0
    assert again.users_verified == 10


def test_audiences_show_no_drift_figure_before_any_audit(synced):
    runtime, _, _ = synced
    with runtime.engine.connect() as conn:
        assert {a.drift for a in list_audiences(conn, ACCOUNT)} == {None}


def test_dry_run_reports_and_writes_nothing(synced, braze):
    runtime, _sender, _desired = synced
    expected_points = tamper(braze)
    with runtime.engine.connect() as conn:
        before = conn.execute(sa.select(braze_users).order_by(braze_users.c.external_id)).all()

    report = Auditor(runtime.engine, runtime.settings).run(full=True, dry_run=True)

    assert report.users_drifted == 5
    assert report.repair_datapoints == expected_points
    with runtime.engine.connect() as conn:
        after = conn.execute(sa.select(braze_users).order_by(braze_users.c.external_id)).all()
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 0
    assert after == before


def test_users_with_a_write_pending_are_not_audited(synced, braze):
    runtime, _sender, _desired = synced
    braze.delete_user("u3")
    with runtime.engine.begin() as conn:
        conn.execute(
            outbox.insert().values(
                workspace_id=1,
                external_id="u3",
                state="pending",
                generation=1,
                due_at=0,
                enqueued_at=0,
            )
        )
    report = Auditor(runtime.engine, runtime.settings).run(full=True)
    assert report.users_read == 9
    assert report.users_drifted == 0


def test_scheduled_audit_pages_oldest_verified_first(make_runtime, synced, braze):
    runtime, sender, desired = synced
    tamper(braze)
    paged = make_runtime(**FAST, **{"jobs.audit_braze.settle_s": 0})
    seen: list[int] = []
    for _ in range(3):
        report = Auditor(paged.engine, paged.settings).run(full=False, budget=4)
        seen.append(report.users_read)
    # 4 + 4 + 2 would be wrong: the repaired users are dirty, so they wait; the pages walk
    # through the others by verified_at, then start again from the oldest.
    assert sum(seen) == 12
    with runtime.engine.connect() as conn:
        unverified = conn.execute(
            sa.select(sa.func.count())
            .select_from(braze_users)
            .where(braze_users.c.verified_at.is_(None))
        ).scalar_one()
    assert unverified == 0
    drain(sender, runtime.engine)
    assert braze.users == desired


def test_export_429_waits_and_resends_without_losing_users(synced, braze):
    runtime, _sender, _desired = synced
    braze.delete_user("u9")
    braze.configure(export_429_next=1)
    report = Auditor(runtime.engine, runtime.settings).run(full=True)
    assert braze.export_requests == 2  # the 429, then the same request again
    assert report.users_read == 10
    assert report.drift_by_kind == {"missing_in_braze": 1}


def test_reconcile_command_prints_a_summary(synced, braze, tmp_path):
    runtime, sender, desired = synced
    expected_points = tamper(braze)
    url = runtime.settings.get("database.url")
    env = {
        "AUDIENCE_SYNC_DATABASE__URL": url,
        "AUDIENCE_SYNC_BRAZE__ALLOWED_CUSTOM_ENDPOINTS": "http://127.0.0.1:",
        "AUDIENCE_SYNC_JOBS__AUDIT_BRAZE__SETTLE_S": "0",
        "AUDIENCE_SYNC_LOG__LEVEL": "WARNING",
    }
    dry = CliRunner().invoke(main, ["reconcile", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "users read: 10" in dry.output
    assert f"data points the repair will cost: {expected_points}" in dry.output
    assert "dry run: nothing written" in dry.output

    result = CliRunner().invoke(main, ["reconcile", "--connection", str(ACCOUNT)], env=env)
    assert result.exit_code == 0, result.output
    assert "repairs queued: 5" in result.output
    assert "missing_in_braze: 1" in result.output
    with runtime.engine.connect() as conn:
        (run,) = recent_runs(conn, job="audit_braze")  # the dry run left no record
    assert run.outcome == "ok"
    assert run.counts["repairs_queued"] == 5
    assert {d["kind"] for d in run.details["drift"]} >= {"missing_in_braze", "array_extra"}
    unknown = CliRunner().invoke(main, ["reconcile", "--connection", "404"], env=env)
    assert unknown.exit_code == 2
    drain(sender, runtime.engine)
    assert braze.users == desired

    # The admin shows the drift the last audit found, per audience (SPEC §8).
    with runtime.engine.connect() as conn:
        views = {a.audience_id: a for a in list_audiences(conn, ACCOUNT)}
    # 201: u0 (string gone), u1 (flipped), u3 (deleted); 202: u0, u3
    assert views[201].drift == 3
    assert views[202].drift == 2


def test_the_scheduled_budget_is_shared_between_workspaces(synced, braze, auth_headers):
    runtime, _sender, _desired = synced
    client = create_app(runtime=runtime).test_client()
    with FakeBraze(api_keys={REST_KEY}) as other:
        settings = connection_settings(other, "string")
        post(client, subscription(ACCOUNT + 1, 301, "Other", **settings), auth_headers)
        profiles = [profile(f"o{n}", [(301, "Other", "add")]) for n in range(10)]
        post(client, membership(ACCOUNT + 1, profiles, **settings), auth_headers)
        drain(make_sender(runtime), runtime.engine)
        report = Auditor(runtime.engine, runtime.settings).run(full=False, budget=6)
        assert report.users_read == 6
        assert braze.export_ids_requested == [3]
        assert other.export_ids_requested == [3]
