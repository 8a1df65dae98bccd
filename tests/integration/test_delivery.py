"""Delivery end to end: Firehose in through the real app, Braze out to a real local server."""

from __future__ import annotations

import itertools
import json
import random
import threading

import pytest
import sqlalchemy as sa

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.core.attributes import segment_membership_string
from audience_sync.core.states import DeliveryReason, OutboxState, WorkspaceState
from audience_sync.delivery.braze_sender import BrazeSender
from audience_sync.store.schema import datapoints, outbox, workspaces
from tests.fakes.braze_server import FakeBraze
from tests.support import dead_count, drain, membership, pending_count, post, profile, subscription

REST_KEY = "rest-key-1"
ACCOUNT = 5001
MODES = [
    "+".join(c)
    for n in (1, 2, 3)
    for c in itertools.combinations(["string", "array", "per_segment"], n)
]
AUDIENCES = {101: "Ibiza Dreamers", 102: "Aspiring Athenians", 103: "Night Owls", 1004: "Big"}
FAST = {
    "delivery.coalesce_s": 0,
    "braze.min_resend_interval_s": 0,
    "delivery.backoff_base_s": 0.01,
    "delivery.backoff_cap_s": 0.05,
    "delivery.retry_window_s": 0,
    "delivery.max_attempts": 50,
}


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}) as server:
        yield server


def connection_settings(braze, mode="string", **extra):
    return {
        "restApiKey": REST_KEY,
        "brazeInstance": "custom",
        "customRestEndpoint": braze.url,
        "sendSegmentsAs": mode,
        **extra,
    }


def make_sender(runtime, settings=None, worker_id="test-sender", budget=None, stop=None):
    settings = settings or runtime.settings
    return BrazeSender(
        engine=runtime.engine,
        settings=settings,
        client=BrazeClient(timeout_s=5),
        budget=budget or RateBudget(settings.get("braze.requests_per_second")),
        worker_id=worker_id,
        stop=stop,
    )


@pytest.fixture
def fast_runtime(make_runtime):
    """Runtimes with no coalescing, no resend spacing and millisecond backoff."""

    def factory(**overrides):
        return make_runtime(**{**FAST, **overrides})

    return factory


def expected_attributes(mode: str, members: set[int], ever: set[int]) -> dict:
    """What Braze must hold for a user after convergence (per-segment false may be absent)."""
    out = {}
    if "string" in mode and members:
        out["SegmentMembership"] = segment_membership_string(members)
    if "array" in mode and members:
        out["SegmentMembershipArray"] = sorted(str(a) for a in members)
    if "per_segment" in mode:
        for a in ever:
            out[f"In {AUDIENCES[a]}"] = a in members
    return out


def assert_braze_matches(braze, mode, model):
    for external_id, (members, ever) in model.items():
        held = dict(braze.users.get(external_id, {}))
        held.pop("email", None)
        held.pop("push_tokens", None)
        if "SegmentMembershipArray" in held:
            if held["SegmentMembershipArray"] == []:
                del held["SegmentMembershipArray"]
            else:
                held["SegmentMembershipArray"] = sorted(held["SegmentMembershipArray"])
        want = expected_attributes(mode, members, ever)
        # "In X" = false and an absent attribute both mean "not in X" to a segment filter.
        for key in [k for k, v in want.items() if v is False]:
            if key not in held:
                del want[key]
        assert held == want, external_id


def run_rounds(
    client, auth_headers, braze, mode, *, users=120, rounds=3, seed=1, drain_each=None, model=None
):
    """Post random membership changes; returns (and extends) the model of desired state:
    external_id -> (audiences the user is in, audiences the user was ever in)."""
    rng = random.Random(seed)
    settings = connection_settings(braze, mode)
    for audience_id, name in AUDIENCES.items():
        post(client, subscription(ACCOUNT, audience_id, name, **settings), auth_headers)
    model = {} if model is None else model
    for _ in range(rounds):
        profiles = []
        for n in range(users):
            external_id = f"user-{n}"
            members, ever = model.setdefault(external_id, (set(), set()))
            changes = []
            for audience_id, name in AUDIENCES.items():
                roll = rng.random()
                if roll < 0.3:
                    changes.append((audience_id, name, "add"))
                    members.add(audience_id)
                    ever.add(audience_id)
                elif roll < 0.5:
                    changes.append((audience_id, name, "delete"))
                    if audience_id in members:
                        members.discard(audience_id)
                    ever.add(audience_id)
            profiles.append(profile(external_id, changes))
        post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
        if drain_each:
            drain_each()
    return model


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converges_and_spends_exactly_the_counted_datapoints(
    fast_runtime, braze, auth_headers, mode
):
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    sender = make_sender(runtime)
    model = run_rounds(
        client, auth_headers, braze, mode, drain_each=lambda: drain(sender, runtime.engine)
    )
    assert_braze_matches(braze, mode, model)
    with runtime.engine.connect() as conn:
        counted = conn.execute(sa.select(sa.func.sum(datapoints.c.points))).scalar_one()
    assert counted == braze.stats()["datapoints"]
    assert braze.violations == []


def test_enter_then_exit_before_the_write_sends_nothing(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, "array+string+per_segment")
    post(
        client, membership(ACCOUNT, [profile("u1", [(101, "A", "add")])], **settings), auth_headers
    )
    post(
        client,
        membership(ACCOUNT, [profile("u1", [(101, "A", "delete")])], **settings),
        auth_headers,
    )
    drain(make_sender(runtime), runtime.engine)
    assert braze.stats()["requests"] == 0
    assert braze.users == {}


def test_unchanged_values_are_never_resent(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    sender = make_sender(runtime)
    settings = connection_settings(braze, "string+per_segment")
    message = membership(ACCOUNT, [profile("u1", [(101, "A", "add")], email="a@x.io")], **settings)
    post(client, message, auth_headers)
    drain(sender, runtime.engine)
    assert braze.stats()["requests"] == 1
    again = membership(ACCOUNT, [profile("u1", [(101, "A", "add")], email="a@x.io")], **settings)
    post(client, again, auth_headers)
    drain(sender, runtime.engine)
    assert braze.stats()["requests"] == 1
    assert braze.users["u1"] == {"SegmentMembership": "'101'", "In A": True, "email": "a@x.io"}


def test_requests_are_full_under_load(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, "string")
    profiles = [profile(f"u{n}", [(101, "A", "add")]) for n in range(750)]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    drain(make_sender(runtime), runtime.engine)
    assert braze.stats()["objects_per_request"] == [75] * 10


def test_minimum_resend_interval_defers_the_next_write(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime(**{"braze.min_resend_interval_s": 3})
    client = create_app(runtime=runtime).test_client()
    clock = {"now": 1_000.0}
    sender = make_sender(runtime)
    settings = connection_settings(braze, "string")
    post(
        client, membership(ACCOUNT, [profile("u1", [(101, "A", "add")])], **settings), auth_headers
    )
    with runtime.engine.begin() as conn:  # make the row due on the fake clock
        conn.execute(outbox.update().values(due_at=0))
    sender.clock = lambda: clock["now"]
    sender.run_once()
    assert braze.users["u1"]["SegmentMembership"] == "'101'"
    post(
        client, membership(ACCOUNT, [profile("u1", [(102, "B", "add")])], **settings), auth_headers
    )
    clock["now"] += 1
    with runtime.engine.begin() as conn:
        conn.execute(outbox.update().values(due_at=0))
    sender.run_once()
    assert braze.stats()["requests"] == 1  # deferred, not sent
    with runtime.engine.connect() as conn:
        due = conn.execute(sa.select(outbox.c.due_at, outbox.c.attempts)).one()
    assert due == (1003.0, 0)
    clock["now"] += 2.5
    sender.run_once()
    assert braze.users["u1"]["SegmentMembership"] == "'101','102'"


def test_a_429_pauses_the_key_and_spends_no_attempt(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    braze.configure(rate_429=1.0)
    settings = connection_settings(braze, "string")
    post(
        client, membership(ACCOUNT, [profile("u1", [(101, "A", "add")])], **settings), auth_headers
    )
    sender = make_sender(runtime)
    sender.run_once()
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(outbox.c.attempts, outbox.c.last_reason)).one()
    assert row == (0, DeliveryReason.RATE_LIMITED)
    assert sender.budget.paused_until(sender_key()) is not None
    braze.configure(rate_429=0.0)
    drain(sender, runtime.engine, timeout_s=10)
    assert braze.users["u1"] == {"SegmentMembership": "'101'"}


def sender_key():
    from audience_sync.braze.keys import fingerprint

    return fingerprint(REST_KEY)


def test_permanent_item_errors_dead_letter_only_that_user_and_replay_requeues(
    fast_runtime, braze, auth_headers
):
    from audience_sync import create_app
    from audience_sync.store.outbox import replay

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    braze.configure(blacklisted_ids={"bad"})
    settings = connection_settings(braze, "string")
    profiles = [profile(x, [(101, "A", "add")]) for x in ("good-1", "bad", "good-2")]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    sender = make_sender(runtime)
    drain(sender, runtime.engine)
    assert set(braze.users) == {"good-1", "good-2"}
    assert dead_count(runtime.engine) == 1
    braze.configure(blacklisted_ids=set())
    with runtime.engine.begin() as conn:
        assert replay(conn, now=0) == 1
    drain(sender, runtime.engine)
    assert braze.users["bad"] == {"SegmentMembership": "'101'"}


def test_auth_failure_suspends_and_a_probe_resumes(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime(
        **{"firehose.suspend_on_auth_failure": True, "braze.probe_interval_s": 0.05}
    )
    client = create_app(runtime=runtime).test_client()
    braze.configure(auth_fail=True)
    settings = connection_settings(braze, "string")
    post(
        client, membership(ACCOUNT, [profile("u1", [(101, "A", "add")])], **settings), auth_headers
    )
    sender = make_sender(runtime)
    sender.run_once()
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(workspaces.c.state)).scalar_one() == WorkspaceState.SUSPENDED
    response = post(client, membership(ACCOUNT, [], **settings), auth_headers)
    assert response["suspend_subscription"] is True
    requests_while_failing = braze.stats()["requests"]
    sender.run_once()  # suspended: nothing claimed
    assert braze.stats()["requests"] in (requests_while_failing, requests_while_failing + 1)
    braze.configure(auth_fail=False)
    import time

    time.sleep(0.06)
    sender._next_probe_check = 0
    drain(sender, runtime.engine, timeout_s=10)
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(workspaces.c.state)).scalar_one() == WorkspaceState.ACTIVE
    assert braze.users["u1"] == {"SegmentMembership": "'101'"}
    response = post(client, membership(ACCOUNT, [], **settings), auth_headers)
    assert response["suspend_subscription"] is False


def test_dry_run_appends_each_request_as_a_json_line(fast_runtime, braze, auth_headers, tmp_path):
    from audience_sync import create_app

    path = tmp_path / "dry.jsonl"
    runtime = fast_runtime(**{"braze.dry_run": True, "braze.dry_run_path": str(path)})
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, "string")
    post(
        client, membership(ACCOUNT, [profile("u1", [(101, "A", "add")])], **settings), auth_headers
    )
    sender = BrazeSender(
        engine=runtime.engine,
        settings=runtime.settings,
        client=BrazeClient(dry_run=True, dry_run_path=str(path)),
        budget=RateBudget(1000),
        worker_id="dry",
    )
    drain(sender, runtime.engine)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["body"] for line in lines] == [
        {"attributes": [{"external_id": "u1", "SegmentMembership": "'101'"}]}
    ]
    assert REST_KEY not in path.read_text()
    assert braze.stats()["requests"] == 0
    assert pending_count(runtime.engine) == 0


def test_client_side_rate_never_exceeds_the_budget(fast_runtime, braze, auth_headers):
    from audience_sync import create_app

    runtime = fast_runtime(**{"braze.requests_per_second": 5, "braze.max_objects_per_request": 1})
    client = create_app(runtime=runtime).test_client()
    settings = connection_settings(braze, "string")
    profiles = [profile(f"u{n}", [(101, "A", "add")]) for n in range(12)]
    post(client, membership(ACCOUNT, profiles, **settings), auth_headers)
    drain(make_sender(runtime), runtime.engine, timeout_s=20)
    assert braze.stats()["requests"] == 12
    assert braze.max_requests_in_window(1.0) <= 5


@pytest.mark.parametrize("mode", MODES)
def test_faults_never_leave_a_wrong_final_state(fast_runtime, auth_headers, mode):
    """10 % 429s, 5 % 5xx, dropped connections before and after apply, per-item errors, four
    concurrent senders: Braze ends equal to the desired state, no user ever in flight twice."""
    from audience_sync import create_app

    runtime = fast_runtime(**{"delivery.workers": 4})
    faults = dict(
        rate_429=0.10,
        rate_5xx=0.05,
        rate_5xx_after_apply=0.02,
        rate_drop=0.02,
        rate_drop_after_apply=0.02,
        rate_item_error=0.05,
        seed=7,
    )
    with FakeBraze(api_keys={REST_KEY}, delay_s=0.002, **faults) as braze:
        client = create_app(runtime=runtime).test_client()
        stop = threading.Event()
        budget = RateBudget(1000)
        senders = [
            make_sender(runtime, worker_id=f"s{n}", budget=budget, stop=stop) for n in range(4)
        ]
        threads = [threading.Thread(target=s.run_forever) for s in senders]
        for thread in threads:
            thread.start()
        try:
            model = run_rounds(client, auth_headers, braze, mode, users=200, rounds=4, seed=3)
            import time

            deadline = time.monotonic() + 60
            while pending_count(runtime.engine) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        with runtime.engine.connect() as conn:
            stuck = conn.execute(
                sa.select(outbox).where(outbox.c.state == OutboxState.PENDING)
            ).fetchall()
        assert stuck == []
        assert dead_count(runtime.engine) == 0
        assert braze.stats()["status_counts"].get("429", 0) > 0
        assert_braze_matches(braze, mode, model)
        assert braze.violations == []


def test_a_refused_key_does_not_hold_up_another_workspace(fast_runtime, auth_headers):
    """Two connections, two REST keys: one is rejected (suspended), the other delivers."""
    from audience_sync import create_app

    runtime = fast_runtime()
    with FakeBraze(api_keys={REST_KEY}) as braze:
        client = create_app(runtime=runtime).test_client()
        good = connection_settings(braze, "string")
        bad = {**good, "restApiKey": "revoked-key"}
        post(client, membership(7001, [profile("a1", [(1, "A", "add")])], **bad), auth_headers)
        post(client, membership(7002, [profile("b1", [(2, "B", "add")])], **good), auth_headers)
        sender = make_sender(runtime)
        for _ in range(5):
            sender.run_once()
        assert braze.users == {"b1": {"SegmentMembership": "'2'"}}
        with runtime.engine.connect() as conn:
            states = dict(
                conn.execute(sa.select(workspaces.c.key_fingerprint, workspaces.c.state)).all()
            )
        assert sorted(states.values()) == [WorkspaceState.ACTIVE, WorkspaceState.SUSPENDED]
        assert pending_count(runtime.engine) == 1  # a1 waits for a probe or new settings


def test_configurations_sharing_a_workspace_write_the_union(fast_runtime, braze, auth_headers):
    """SPEC §4.6: two mParticle configurations on one REST key no longer overwrite each other."""
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    sender = make_sender(runtime)
    first = connection_settings(braze, "string+array")
    second = connection_settings(braze, "string+per_segment")
    post(
        client, membership(8001, [profile("u1", [(11034, "Ibiza", "add")])], **first), auth_headers
    )
    post(
        client,
        membership(8002, [profile("u1", [(11036, "Athens", "add")])], **second),
        auth_headers,
    )
    drain(sender, runtime.engine)
    assert braze.users["u1"] == {
        "SegmentMembership": "'11034','11036'",
        "SegmentMembershipArray": ["11034"],
        "In Athens": True,
    }
    post(
        client,
        membership(8001, [profile("u1", [(11034, "Ibiza", "delete")])], **first),
        auth_headers,
    )
    drain(sender, runtime.engine)
    assert braze.users["u1"] == {
        "SegmentMembership": "'11036'",
        "SegmentMembershipArray": [],
        "In Athens": True,
    }
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(workspaces)).scalar_one() == 1


def test_invalid_settings_hold_back_shared_users_instead_of_clearing_them(
    fast_runtime, braze, auth_headers
):
    """SPEC §3.4: deliveries wait until invalid settings are fixed, even in a shared workspace."""
    from audience_sync import create_app

    runtime = fast_runtime()
    client = create_app(runtime=runtime).test_client()
    sender = make_sender(runtime)
    a = connection_settings(braze, "string")
    b = connection_settings(braze, "per_segment")
    post(client, membership(8001, [profile("both", [(1, "One", "add")])], **a), auth_headers)
    post(client, membership(8002, [profile("both", [(2, "Two", "add")])], **b), auth_headers)
    drain(sender, runtime.engine)
    assert braze.users["both"] == {"SegmentMembership": "'1'", "In Two": True}

    broken = {**b, "sendSegmentsAs": "everything"}
    post(client, membership(8002, [], **broken), auth_headers)  # B is now invalid_settings
    post(
        client,
        membership(
            8001,
            [profile("both", [(3, "Three", "add")]), profile("only-a", [(1, "One", "add")])],
            **a,
        ),
        auth_headers,
    )
    for _ in range(3):
        sender.run_once()
    assert braze.users["only-a"] == {"SegmentMembership": "'1'"}
    assert braze.users["both"] == {"SegmentMembership": "'1'", "In Two": True}  # untouched
    with runtime.engine.connect() as conn:
        reason = conn.execute(
            sa.select(outbox.c.last_reason).where(outbox.c.external_id == "both")
        ).scalar_one()
    assert reason == "connection_invalid"

    post(client, membership(8002, [], **b), auth_headers)  # fixed
    with runtime.engine.begin() as conn:
        conn.execute(outbox.update().values(due_at=0))
    drain(sender, runtime.engine)
    assert braze.users["both"] == {"SegmentMembership": "'1','3'", "In Two": True}
