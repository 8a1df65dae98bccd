"""What Firehose messages leave in the tables: memberships, users, audiences, connections,
workspaces and the outbox (SPEC §3.2-§3.4, §4.1, §4.2, §4.6)."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest
import sqlalchemy as sa

from audience_sync.core.states import (
    AudienceState,
    ConnectionState,
    IntakeCounter,
    OutboxState,
    WorkspaceState,
)
from audience_sync.firehose import testing as ft
from audience_sync.jobs.cleanup_removed import mark_pending
from tests.support import message_id_count

ACCOUNT = 4242
T0 = 1_714_592_744_000


@pytest.fixture
def post(client, auth_headers):
    def send(body: dict, *, to=None) -> dict:
        response = (to or client).post("/firehose", json=body, headers=auth_headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    return send


def rows(engine: sa.Engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def memberships(engine) -> dict[tuple[str, int], tuple[bool, float]]:
    return {
        (e, a): (bool(m), c)
        for e, a, m, c in rows(
            engine, "SELECT external_id, audience_id, is_member, changed_at FROM memberships"
        )
    }


def outbox(engine) -> dict[tuple[int, str], int]:
    """Dirty users -> generation, once the cleanup_removed job has paged what subscription and
    settings changes left for it (the request itself marks nobody: see test_cleanup_removed)."""
    mark_pending(engine, now=time.time(), budget=10**9)
    return {
        (w, e): g
        for w, e, g in rows(engine, "SELECT workspace_id, external_id, generation FROM outbox")
    }


def connection(engine, account_id=ACCOUNT):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT state, workspace_id, settings_errors, account_settings FROM connections "
                "WHERE account_id = :a"
            ),
            {"a": account_id},
        ).one()


def workspace_id(engine, account_id=ACCOUNT) -> int:
    return connection(engine, account_id).workspace_id


def counter(engine, reason, account_id=ACCOUNT) -> int:
    found = rows(
        engine,
        "SELECT SUM(count) FROM counters WHERE scope = :s AND reason = :r",
        s=f"account:{account_id}",
        r=reason,
    )
    return int(found[0][0] or 0)


def as_json(value):
    return json.loads(value) if isinstance(value, str) else value


# --- memberships ------------------------------------------------------------------------------


def test_generated_membership_stream_leaves_exactly_the_expected_state(engine, post):
    rng = random.Random(20240501)
    user_ids = [f"user-{i}" for i in range(120)]
    audience_ids = list(range(1000, 1008))
    messages, expected = [], {}
    touched = set()
    for n in range(40):
        timestamp_ms = T0 + n * 1000  # distinct timestamps
        profiles = []
        for customer in rng.sample(user_ids, 25):
            changes = [
                ft.audience_change(a, rng.choice(["add", "add", "delete", "attribute_update"]))
                for a in rng.sample(audience_ids, rng.randint(1, 3))
            ]
            profiles.append(ft.profile(customer, changes, email=f"{customer}@example.com"))
            touched.add(customer)
            for change in changes:
                if change["action"] != "attribute_update":
                    expected[customer, change["audience_id"]] = (
                        change["action"] == "add",
                        timestamp_ms / 1000,
                    )
        # A profile mParticle cannot identify (hashed only) rides along.
        profiles.append(
            ft.profile(
                None,
                [ft.audience_change(1000)],
                extra_identities=[ft.identity("customer", "ab12", "sha256")],
            )
        )
        messages.append(ft.membership_request(ACCOUNT, profiles, timestamp_ms=timestamp_ms))
    # mParticle retries some messages, and nothing arrives in order.
    delivered = messages + rng.sample(messages, 10)
    rng.shuffle(delivered)
    for message in delivered:
        assert post(message)["suspend_subscription"] is False

    assert memberships(engine) == expected
    assert {e for (e,) in rows(engine, "SELECT external_id FROM users")} == touched
    ws = workspace_id(engine)
    assert set(outbox(engine)) == {(ws, e) for e in touched}
    assert counter(engine, "no_external_id") == 40
    assert counter(engine, IntakeCounter.DUPLICATE_MESSAGE) == 10
    applied = sum(
        len(
            {
                (p["user_identities"][0]["value"], a["audience_id"])
                for p in m["user_profiles"]
                if p["user_identities"][0]["encoding"] == "raw"
                for a in p["audiences"]
                if a["action"] != "attribute_update"
            }
        )
        for m in messages
    )
    assert counter(engine, IntakeCounter.MEMBERSHIPS_APPLIED) == applied
    assert message_id_count(engine) == 40


def test_a_late_older_message_does_not_undo_a_newer_one(engine, post):
    post(
        ft.membership_request(
            ACCOUNT, [ft.profile("u1", [ft.audience_change(7, "delete")])], timestamp_ms=T0 + 5000
        )
    )
    post(
        ft.membership_request(
            ACCOUNT,
            [ft.profile("u1", [ft.audience_change(7, "add"), ft.audience_change(8, "add")])],
            timestamp_ms=T0,
        )
    )
    assert memberships(engine) == {
        ("u1", 7): (False, (T0 + 5000) / 1000),
        ("u1", 8): (True, T0 / 1000),
    }


def test_within_one_request_later_entries_win(engine, post):
    post(
        ft.membership_request(
            ACCOUNT,
            [
                ft.profile("u1", [ft.audience_change(7, "add")]),
                ft.profile("u1", [ft.audience_change(7, "delete")]),
                ft.profile("u2", [ft.audience_change(7, "delete"), ft.audience_change(7, "add")]),
            ],
            timestamp_ms=T0,
        )
    )
    assert {k: v[0] for k, v in memberships(engine).items()} == {("u1", 7): False, ("u2", 7): True}


def test_missing_timestamp_uses_the_receive_time(engine, post):
    post(ft.membership_request(ACCOUNT, [ft.profile("u1", [ft.audience_change(7)])]))
    ((is_member, changed_at),) = memberships(engine).values()
    import time

    assert is_member and abs(changed_at - time.time()) < 60


def test_a_repeated_message_id_is_acknowledged_without_being_applied_again(engine, post):
    message = ft.membership_request(
        ACCOUNT, [ft.profile("u1", [ft.audience_change(7)])], timestamp_ms=T0
    )
    first = post(message)
    before = outbox(engine)
    # Even if the retry carried different content, nothing of it is applied.
    retry = dict(message, user_profiles=[ft.profile("u1", [ft.audience_change(7, "delete")])])
    second = post(retry)
    assert second["type"] == first["type"] == "audience_membership_change_response"
    assert second["id"] != first["id"]
    assert memberships(engine) == {("u1", 7): (True, T0 / 1000)}
    assert outbox(engine) == before
    assert counter(engine, IntakeCounter.MEMBERSHIPS_APPLIED) == 1
    assert counter(engine, IntakeCounter.DUPLICATE_MESSAGE) == 1


def test_verification_noop_is_answered_and_registers_the_connection(engine, post):
    body = post(ft.membership_request(ACCOUNT))
    assert body["suspend_subscription"] is False
    assert connection(engine).state == ConnectionState.ACTIVE
    assert rows(engine, "SELECT COUNT(*) FROM users") == [(0,)]


def test_user_email_mpid_and_push_tokens(engine, post):
    settings = ft.account_settings(apiKeyOperatingSystem="ios")
    post(
        ft.membership_request(
            ACCOUNT,
            [ft.profile("u1", [], email="old@example.com", mpid="11", apns_token="t0")],
            settings=settings,
        )
    )
    post(
        ft.membership_request(
            ACCOUNT,
            [ft.profile("u1", [], apns_token="t1", gcm_token="android-only")],
            settings=settings,
        )
    )
    (user,) = rows(engine, "SELECT email, mpid, push_tokens FROM users")
    assert user[:2] == ("old@example.com", "11")  # not overwritten by absent values
    assert as_json(user[2]) == ["t0", "t1"]
    post(
        ft.membership_request(
            ACCOUNT,
            [ft.profile("u1", [], email="new@example.com", apns_token=f"n{i}") for i in range(12)],
            settings=settings,
        )
    )
    (user,) = rows(engine, "SELECT email, mpid, push_tokens FROM users")
    assert user[0] == "new@example.com"
    assert as_json(user[2]) == [f"n{i}" for i in range(2, 12)]  # the 10 newest


def test_unknown_audiences_are_registered_and_known_names_kept(engine, post):
    post(ft.subscription_request(ACCOUNT, 7, "add", "Ibiza Dreamers"))
    post(
        ft.membership_request(
            ACCOUNT,
            [
                ft.profile(
                    "u1",
                    [ft.audience_change(7, name="Other"), ft.audience_change(8, name="  Spaced  ")],
                )
            ],
        )
    )
    assert rows(engine, "SELECT audience_id, name, state FROM audiences ORDER BY 1") == [
        (7, "Ibiza Dreamers", AudienceState.ACTIVE),
        (8, "  Spaced  ", AudienceState.ACTIVE),
    ]


def test_changes_for_a_removed_audience_are_ignored_and_counted(engine, post):
    post(
        ft.membership_request(ACCOUNT, [ft.profile("u1", [ft.audience_change(7)])], timestamp_ms=T0)
    )
    post(ft.subscription_request(ACCOUNT, 7, "remove"))
    post(
        ft.membership_request(
            ACCOUNT,
            [
                ft.profile("u1", [ft.audience_change(7, "delete"), ft.audience_change(8)]),
                ft.profile("u2", [ft.audience_change(7)]),
            ],
            timestamp_ms=T0 + 1000,
        )
    )
    assert {k: v[0] for k, v in memberships(engine).items()} == {("u1", 7): True, ("u1", 8): True}
    assert counter(engine, IntakeCounter.AUDIENCE_REMOVED) == 2


def test_invalid_settings_store_state_but_mark_nobody_dirty(engine, post):
    settings = ft.account_settings(restApiKey="", sendSegmentsAs="everything")
    post(
        ft.membership_request(
            ACCOUNT, [ft.profile("u1", [ft.audience_change(7)])], settings=settings
        )
    )
    state = connection(engine)
    assert state.state == ConnectionState.INVALID_SETTINGS
    assert state.workspace_id is None
    assert set(as_json(state.settings_errors)) == {
        "restApiKey: required",
        "sendSegmentsAs: must be string, array, per_segment or a '+'-joined combination",
    }
    assert as_json(state.account_settings) == settings  # as mParticle sent them
    assert memberships(engine)
    assert outbox(engine) == {}


def test_users_are_marked_dirty_after_the_coalescing_window(engine, make_client, post):
    client = make_client(**{"delivery.coalesce_s": 30})
    post(ft.membership_request(ACCOUNT, [ft.profile("u1", [ft.audience_change(7)])]), to=client)
    ((due_at, enqueued_at, state),) = rows(engine, "SELECT due_at, enqueued_at, state FROM outbox")
    assert state == OutboxState.PENDING
    assert due_at - enqueued_at == pytest.approx(30)


# --- subscriptions ----------------------------------------------------------------------------


def _members_of_7(post):
    post(
        ft.membership_request(
            ACCOUNT,
            [
                ft.profile("in-1", [ft.audience_change(7)]),
                ft.profile("in-2", [ft.audience_change(7), ft.audience_change(9)]),
                ft.profile("left", [ft.audience_change(7, "delete")]),
                ft.profile("other", [ft.audience_change(9)]),
            ],
            timestamp_ms=T0,
        )
    )


def _clean_outbox(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outbox"))


def test_subscription_add_update_remove_lifecycle(engine, post):
    post(ft.subscription_request(ACCOUNT, 7, "add", "Ibiza Dreamers"))
    assert rows(engine, "SELECT name, state, cleanup, removed_at FROM audiences") == [
        ("Ibiza Dreamers", AudienceState.ACTIVE, False, None)
    ]
    _members_of_7(post)
    ws = workspace_id(engine)

    _clean_outbox(engine)
    post(ft.subscription_request(ACCOUNT, 7, "update", "Ibiza Dreamers"))
    assert outbox(engine) == {}  # same name: nothing to write

    post(ft.subscription_request(ACCOUNT, 7, "update", "Mallorca Dreamers"))
    assert rows(engine, "SELECT name FROM audiences WHERE audience_id = 7") == [
        ("Mallorca Dreamers",)
    ]
    # Members and former members: "In <old name>" goes, "In <new name>" comes.
    assert set(outbox(engine)) == {(ws, "in-1"), (ws, "in-2"), (ws, "left")}

    _clean_outbox(engine)
    post(ft.subscription_request(ACCOUNT, 7, "remove", "Mallorca Dreamers"))
    ((state, cleanup, removed_at),) = rows(
        engine, "SELECT state, cleanup, removed_at FROM audiences WHERE audience_id = 7"
    )
    assert (state, cleanup) == (AudienceState.REMOVED, False)
    assert removed_at is not None
    assert outbox(engine) == {}  # no cleanup asked: attributes stay

    post(ft.subscription_request(ACCOUNT, 7, "add", "Mallorca Dreamers"))
    assert rows(
        engine, "SELECT state, cleanup, removed_at FROM audiences WHERE audience_id = 7"
    ) == [(AudienceState.ACTIVE, False, None)]
    assert set(outbox(engine)) == {(ws, "in-1"), (ws, "in-2"), (ws, "left")}
    assert counter(engine, "subscription_add") == 2
    assert counter(engine, "subscription_update") == 2
    assert counter(engine, "subscription_remove") == 1


def test_remove_with_cleanup_marks_every_recorded_member_dirty(engine, post):
    settings = ft.account_settings(cleanupOnRemove="true")
    post(ft.subscription_request(ACCOUNT, 7, "add", settings=settings))
    _members_of_7(post)
    post(ft.subscription_request(ACCOUNT, 9, "add", settings=settings))
    _clean_outbox(engine)
    post(ft.subscription_request(ACCOUNT, 7, "remove", settings=settings))
    ws = workspace_id(engine)
    assert rows(engine, "SELECT state, cleanup FROM audiences WHERE audience_id = 7") == [
        (AudienceState.REMOVED, True)
    ]
    assert set(outbox(engine)) == {(ws, "in-1"), (ws, "in-2"), (ws, "left")}
    # A repeated remove (new message id) changes nothing.
    _clean_outbox(engine)
    post(ft.subscription_request(ACCOUNT, 7, "remove", settings=settings))
    assert outbox(engine) == {}


def test_subscription_for_unknown_audience_registers_it(engine, post):
    post(ft.subscription_request(ACCOUNT, 5, "update", "Renamed"))
    post(ft.subscription_request(ACCOUNT, 6, "remove", "Gone"))
    assert rows(engine, "SELECT audience_id, name, state FROM audiences ORDER BY 1") == [
        (5, "Renamed", AudienceState.ACTIVE),
        (6, "Gone", AudienceState.REMOVED),
    ]


def test_enqueueing_bumps_generation_and_keeps_due_time(engine, post):
    _members_of_7(post)
    before = rows(
        engine, "SELECT external_id, generation, due_at FROM outbox WHERE external_id = 'in-1'"
    )
    post(ft.subscription_request(ACCOUNT, 7, "update", "New name"))
    mark_pending(engine, now=time.time(), budget=10**9)  # the cleanup_removed job's work
    after = rows(
        engine, "SELECT external_id, generation, due_at FROM outbox WHERE external_id = 'in-1'"
    )
    assert after[0][1] == before[0][1] + 1
    assert after[0][2] == before[0][2]


# --- connection settings ----------------------------------------------------------------------


def test_invalid_then_valid_settings_marks_every_user_dirty(engine, post):
    bad = ft.account_settings(restApiKey="")
    post(
        ft.membership_request(
            ACCOUNT, [ft.profile(f"u{i}", [ft.audience_change(7)]) for i in range(5)], settings=bad
        )
    )
    assert outbox(engine) == {}
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings()))
    state = connection(engine)
    assert state.state == ConnectionState.ACTIVE
    assert as_json(state.settings_errors) == []
    assert set(outbox(engine)) == {(state.workspace_id, f"u{i}") for i in range(5)}


def test_unchanged_settings_do_not_touch_the_outbox(engine, post):
    _members_of_7(post)
    before = outbox(engine)
    post(ft.membership_request(ACCOUNT))
    post(ft.subscription_request(ACCOUNT, 99, "add"))
    assert outbox(engine) == before


@pytest.mark.parametrize(
    ("setting", "value", "marks_users"),
    [
        pytest.param("sendSegmentsAs", "array+per_segment", True, id="formats"),
        pytest.param("apiKey", "another-app", True, id="app-id"),
        pytest.param("apiKeyOperatingSystem", "ios", True, id="push-platform"),
        pytest.param("emailIdentityType", "none", True, id="email-identity"),
        pytest.param("updateExistingOnly", "true", True, id="update-existing-only"),
        pytest.param("cleanupOnRemove", "true", False, id="cleanup-only"),
    ],
)
def test_settings_changes_that_change_what_braze_holds_mark_users(
    engine, post, setting, value, marks_users
):
    _members_of_7(post)
    _clean_outbox(engine)
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(**{setting: value})))
    assert bool(outbox(engine)) is marks_users
    if marks_users:
        assert len(outbox(engine)) == 4


def test_key_rotation_keeps_the_workspace(engine, post):
    _members_of_7(post)
    ws = workspace_id(engine)
    (old_fingerprint,) = rows(engine, "SELECT key_fingerprint FROM workspaces")
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(restApiKey="rotated-key")))
    assert workspace_id(engine) == ws
    assert rows(engine, "SELECT COUNT(*) FROM workspaces") == [(1,)]
    (new_fingerprint,) = rows(engine, "SELECT key_fingerprint FROM workspaces")
    assert new_fingerprint != old_fingerprint


def test_key_change_on_a_shared_workspace_moves_to_a_new_one(engine, post):
    post(ft.membership_request(ACCOUNT))
    post(ft.membership_request(ACCOUNT + 1))
    shared = workspace_id(engine)
    assert workspace_id(engine, ACCOUNT + 1) == shared
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(restApiKey="own-key")))
    assert workspace_id(engine) != shared
    assert workspace_id(engine, ACCOUNT + 1) == shared
    # Back to the shared key: the existing workspace is found again.
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings()))
    assert workspace_id(engine) == shared


def test_another_instance_is_another_workspace(engine, post):
    post(ft.membership_request(ACCOUNT))
    ws = workspace_id(engine)
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(brazeInstance="EU-01")))
    assert workspace_id(engine) != ws
    assert rows(engine, "SELECT endpoint FROM workspaces ORDER BY id")[-1] == (
        "https://rest.fra-01.braze.eu",
    )


def _suspend(engine):
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE workspaces "
                "SET state = 'suspended', state_reason = 'braze_401', suspended_at = 1"
            )
        )


def test_a_settings_change_resumes_a_suspended_workspace(engine, post):
    post(ft.membership_request(ACCOUNT))
    _suspend(engine)
    post(ft.membership_request(ACCOUNT))  # same settings: stays suspended
    assert rows(engine, "SELECT state FROM workspaces") == [(WorkspaceState.SUSPENDED,)]
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(restApiKey="fixed-key")))
    assert rows(engine, "SELECT state, state_reason, suspended_at FROM workspaces") == [
        (WorkspaceState.ACTIVE, None, None)
    ]


def test_suspend_subscription_only_when_configured(engine, make_client, auth_headers):
    for configured in (False, True):
        client = make_client(**{"firehose.suspend_on_auth_failure": configured})
        account = ACCOUNT + int(configured)
        settings = ft.account_settings(restApiKey=f"key-{configured}")

        def send(message):
            response = client.post("/firehose", json=message, headers=auth_headers)
            assert response.status_code == 200
            return response.get_json()["suspend_subscription"]

        assert send(ft.membership_request(account, settings=settings)) is False
        ws = workspace_id(engine, account)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE workspaces SET state = 'suspended' WHERE id = :w"), {"w": ws}
            )
        message = ft.membership_request(
            account, [ft.profile("u", [ft.audience_change(1)])], settings=settings
        )
        assert send(message) is configured
        assert send(message) is configured  # a duplicate answers the same


def test_local_overrides_complete_the_settings(engine, make_client, auth_headers):
    client = make_client(**{f"connections.{ACCOUNT}.restApiKey": "local-secret"})
    settings = ft.account_settings()
    del settings["restApiKey"]
    response = client.post(
        "/firehose",
        json=ft.membership_request(
            ACCOUNT, [ft.profile("u1", [ft.audience_change(1)])], settings=settings
        ),
        headers=auth_headers,
    )
    assert response.status_code == 200
    state = connection(engine)
    assert state.state == ConnectionState.ACTIVE
    assert "restApiKey" not in as_json(state.account_settings)  # only mParticle's are stored
    assert set(outbox(engine)) == {(state.workspace_id, "u1")}


def test_a_message_without_account_settings_keeps_the_stored_ones(engine, post):
    post(ft.membership_request(ACCOUNT, settings=ft.account_settings(sendSegmentsAs="array")))
    message = ft.membership_request(ACCOUNT, [ft.profile("u1", [ft.audience_change(1)])])
    del message["account"]["account_settings"]
    post(message)
    state = connection(engine)
    assert state.state == ConnectionState.ACTIVE
    assert as_json(state.account_settings)["sendSegmentsAs"] == "array"
    assert set(outbox(engine)) == {(state.workspace_id, "u1")}


def test_nothing_is_logged_of_payloads_or_secrets(post, caplog):
    caplog.set_level("DEBUG")
    secret = f"secret-{uuid.uuid4()}"
    post(
        ft.membership_request(
            ACCOUNT,
            [ft.profile("person@example.com", [ft.audience_change(1)], email="person@example.com")],
            settings=ft.account_settings(restApiKey=secret),
        )
    )
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "firehose_accepted" in text
    assert secret not in text
    assert "person@example.com" not in text
