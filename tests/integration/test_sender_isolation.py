"""One bad connection or user never stops the others (issue 7): settings Braze can never accept
are refused at intake, and what still fails for one user becomes a counted outcome for it."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.delivery import braze_sender as sender_module
from audience_sync.store.schema import connections, counters, outbox
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import FAST, REST_KEY, make_sender
from tests.support import drain, membership, post, profile, subscription


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}) as server:
        yield server


def connection(braze, key=REST_KEY):
    return {"restApiKey": key, "brazeInstance": "custom", "customRestEndpoint": braze.url}


def subscribe_one_user(client, auth_headers, account_id, settings, external_id):
    post(client, subscription(account_id, 1, "Audience", **settings), auth_headers)
    post(
        client,
        membership(account_id, [profile(external_id, [(1, "Audience", "add")])], **settings),
        auth_headers,
    )


def connection_state(engine, account_id):
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(connections.c.state, connections.c.settings_errors).where(
                connections.c.account_id == account_id
            )
        ).one()
    return row.state, row.settings_errors


def test_rest_key_that_cannot_be_a_header_is_invalid_settings_at_intake(
    make_runtime, braze, auth_headers
):
    runtime = make_runtime(**FAST)
    client = create_app(runtime=runtime).test_client()
    subscribe_one_user(client, auth_headers, 1, connection(braze, key="clé-\u20ac"), "bad-user")
    subscribe_one_user(client, auth_headers, 2, connection(braze), "good-user")
    state, errors = connection_state(runtime.engine, 1)
    assert state == "invalid_settings"
    assert errors == ["restApiKey: must be Latin-1 text without control characters"]
    assert connection_state(runtime.engine, 2)[0] == "active"
    drain(make_sender(runtime), runtime.engine, timeout_s=20)
    assert braze.users["good-user"]["SegmentMembership"] == "'1'"
    assert "bad-user" not in braze.users


def outbox_row(engine, external_id):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(outbox.c.state, outbox.c.attempts, outbox.c.last_reason).where(
                outbox.c.external_id == external_id
            )
        ).one()


def counter(engine, reason):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(counters.c.count), 0)).where(
                counters.c.reason == reason
            )
        ).scalar_one()


def test_a_connection_whose_requests_cannot_be_built_fails_alone(
    make_runtime, braze, auth_headers, monkeypatch
):
    runtime = make_runtime(**{**FAST, "delivery.max_attempts": 3})
    client = create_app(runtime=runtime).test_client()
    braze.api_keys = frozenset({REST_KEY, "other-key"})
    subscribe_one_user(client, auth_headers, 1, connection(braze, key="bad-key"), "bad-user")
    for n, key in enumerate((REST_KEY, "other-key")):
        subscribe_one_user(client, auth_headers, 2 + n, connection(braze, key=key), f"good-{n}")

    real_build = sender_module.build_requests

    def build_requests(objects, **kwargs):
        if any(o["external_id"] == "bad-user" for o in objects):
            raise RuntimeError("cannot build this connection's request")
        return real_build(objects, **kwargs)

    monkeypatch.setattr(sender_module, "build_requests", build_requests)
    sender = make_sender(runtime)
    # One iteration claims all three workspaces: the healthy ones are delivered in it.
    assert sender.run_once() == 3
    assert braze.users["good-0"]["SegmentMembership"] == "'1'"
    assert braze.users["good-1"]["SegmentMembership"] == "'1'"
    assert outbox_row(runtime.engine, "bad-user") == ("pending", 1, "internal_error")
    # Retried per policy, then dead-lettered; every attempt counted.
    for _ in range(200):
        if outbox_row(runtime.engine, "bad-user").state == "dead":
            break
        sender.run_once()
        time.sleep(0.01)
    assert outbox_row(runtime.engine, "bad-user") == ("dead", 3, "internal_error")
    assert counter(runtime.engine, "internal_error") == 3
    assert counter(runtime.engine, "dead_lettered") == 1
    assert "bad-user" not in braze.users


def test_a_user_whose_write_cannot_be_planned_fails_alone_in_its_workspace(
    make_runtime, braze, auth_headers, monkeypatch
):
    runtime = make_runtime(**{**FAST, "delivery.max_attempts": 2})
    client = create_app(runtime=runtime).test_client()
    settings = connection(braze)
    post(client, subscription(1, 1, "Audience", **settings), auth_headers)
    users = ["good-a", "bad-user", "good-b"]
    post(
        client,
        membership(1, [profile(u, [(1, "Audience", "add")]) for u in users], **settings),
        auth_headers,
    )
    real_plan = sender_module.plan_batch

    def plan_batch(claims, *args, **kwargs):
        if any(c.external_id == "bad-user" for c in claims):
            raise ValueError("this user's data breaks the plan")
        return real_plan(claims, *args, **kwargs)

    monkeypatch.setattr(sender_module, "plan_batch", plan_batch)
    sender = make_sender(runtime)
    assert sender.run_once() == 3
    # Same workspace, same iteration: the others are delivered, the bad one counted.
    assert braze.users["good-a"]["SegmentMembership"] == "'1'"
    assert braze.users["good-b"]["SegmentMembership"] == "'1'"
    assert outbox_row(runtime.engine, "bad-user") == ("pending", 1, "internal_error")
    for _ in range(200):
        if outbox_row(runtime.engine, "bad-user").state == "dead":
            break
        sender.run_once()
        time.sleep(0.01)
    assert outbox_row(runtime.engine, "bad-user") == ("dead", 2, "internal_error")
    assert counter(runtime.engine, "internal_error") == 2
    assert "bad-user" not in braze.users
