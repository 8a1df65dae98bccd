"""Braze's per-object answers through the real sender, against FakeBraze answering them (SPEC §5.3).

Firehose in through the real app; the real ``BrazeSender`` and ``BrazeClient`` out to FakeBraze,
which answers the recorded responses of ``tests/fixtures/braze_responses/`` (then behaves as
Braze). On SQLite and PostgreSQL:

- a user with a bad email gets its membership attributes within one retry, the email flagged and
  never sent again until it changes;
- identity errors dead-letter at once with their reason;
- no user already applied is written twice.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.braze.client import BrazeClient
from audience_sync.braze.object_errors import flag_for
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.core.states import OutboxState
from audience_sync.delivery.braze_sender import BrazeSender
from audience_sync.store.schema import braze_users, counters, outbox
from tests.braze_responses import load_cases
from tests.fakes.braze_server import Canned, FakeBraze
from tests.support import drain, membership, post, profile, subscription

REST_KEY = "rest-key-1"
APP_KEY = "app-key-1"
ACCOUNT = 5001
AUDIENCE, NAME = 101, "Ibiza Dreamers"
MEMBER = {"SegmentMembership": "'101'", "In Ibiza Dreamers": True}
BAD_EMAIL = "mickey@@disney"
LIVE_EMAIL_ERROR = "The value provided for the 'email' field is not a valid email."
FAST = {
    "delivery.coalesce_s": 0,
    "braze.min_resend_interval_s": 0,
    "delivery.backoff_base_s": 0.01,
    "delivery.backoff_cap_s": 0.05,
    "delivery.retry_window_s": 0,
    "delivery.max_attempts": 50,
    "braze.probe_interval_s": 0.05,
}


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}) as server:
        yield server


@pytest.fixture
def world(make_runtime, braze, auth_headers):
    """A runtime, its Firehose client with one subscribed audience, and a sender."""
    runtime = make_runtime(**FAST)
    client = create_app(runtime=runtime).test_client()
    settings = {
        "restApiKey": REST_KEY,
        "brazeInstance": "custom",
        "customRestEndpoint": braze.url,
        "sendSegmentsAs": "string+per_segment",
        "apiKey": APP_KEY,
        "apiKeyOperatingSystem": "ios",
    }
    post(client, subscription(ACCOUNT, AUDIENCE, NAME, **settings), auth_headers)
    sender = BrazeSender(
        engine=runtime.engine,
        settings=runtime.settings,
        client=BrazeClient(timeout_s=5),
        budget=RateBudget(runtime.settings.get("braze.requests_per_second")),
        worker_id="test-sender",
    )

    def send(*profiles):
        post(client, membership(ACCOUNT, list(profiles), **settings), auth_headers)

    return runtime, send, sender


def member(external_id, *, email=None, tokens=(), audience=(AUDIENCE, NAME)):
    return profile(external_id, [(*audience, "add")], email=email, push_tokens=tokens)


def sent_objects(braze, external_id, start=0):
    return [o for o in braze.received_objects[start:] if o.get("external_id") == external_id]


def row_of(engine, table, external_id, *columns):
    with engine.connect() as conn:
        return conn.execute(
            sa.select(*(table.c[c] for c in columns)).where(table.c.external_id == external_id)
        ).one()


def counted(engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(counters.c.reason, sa.func.sum(counters.c.count)).group_by(counters.c.reason)
        )
        return {reason: int(n) for reason, n in rows}


def test_a_bad_email_never_holds_back_the_membership(world, braze):
    runtime, send, sender = world
    braze.configure(
        object_error=lambda obj: (
            {"type": LIVE_EMAIL_ERROR} if obj.get("email") == BAD_EMAIL else None
        )
    )
    send(member("u-bad", email=BAD_EMAIL), member("u-ok", email="ok@example.com"))

    sender.run_once()  # Braze refuses u-bad's email (an error without input_array)
    assert "u-bad" not in braze.users
    state, attempts, reason = row_of(
        runtime.engine, outbox, "u-bad", "state", "attempts", "last_reason"
    )
    assert (state, attempts, reason) == (OutboxState.PENDING, 0, "invalid_email")
    sender.run_once()  # the one retry: at once, without the email
    assert braze.users["u-bad"] == MEMBER
    assert braze.users["u-ok"] == {**MEMBER, "email": "ok@example.com"}
    assert len(sent_objects(braze, "u-ok")) == 1
    assert [o.get("email") for o in sent_objects(braze, "u-bad")] == [BAD_EMAIL, None]
    flags, outcome = row_of(runtime.engine, braze_users, "u-bad", "flags", "last_outcome")
    assert (flags, outcome) == (["invalid_email"], "accepted")
    seen = counted(runtime.engine)
    assert (seen["field_refused"], seen["invalid_email"]) == (1, 1)

    # A new membership goes; the refused email is not sent again while it is unchanged.
    send(member("u-bad", email=BAD_EMAIL, audience=(102, "Night Owls")))
    drain(sender, runtime.engine)
    assert braze.users["u-bad"]["In Night Owls"] is True
    assert [o.get("email") for o in sent_objects(braze, "u-bad")].count(BAD_EMAIL) == 1

    # A corrected email is sent, and the flag goes.
    send(member("u-bad", email="mickey@disney.com"))
    drain(sender, runtime.engine)
    assert braze.users["u-bad"]["email"] == "mickey@disney.com"
    assert row_of(runtime.engine, braze_users, "u-bad", "flags") == ([],)
    assert braze.violations == []


def test_identity_errors_dead_letter_at_once_with_their_reason(world, braze):
    runtime, send, sender = world
    braze.answer_next(
        Canned(
            status=201,
            body={
                "message": "success",
                "errors": [{"type": "'external_id' must be fewer than 988 bytes", "index": 1}],
            },
        )
    )
    send(*(member(f"u{n}") for n in range(3)))
    sender.run_once()
    blamed = braze.received_objects[1]["external_id"]
    state, attempts, reason = row_of(
        runtime.engine, outbox, blamed, "state", "attempts", "last_reason"
    )
    assert (state, attempts, reason) == (OutboxState.DEAD, 1, "external_id_too_large")
    drain(sender, runtime.engine)
    assert Counter(o["external_id"] for o in braze.received_objects) == {
        "u0": 1,
        "u1": 1,
        "u2": 1,
    }
    assert blamed not in braze.users
    assert counted(runtime.engine)["dead_lettered"] == 1


def _case_profiles(case):
    """Users for one recorded answer: each has an email and a push token, so every field a
    recorded refusal names that we do send is in its object."""
    return [
        member(f"{case.id}-{n}", email=f"user{n}@example.com", tokens=[f"{case.id}-token-{n}"])
        for n in range(case.sent)
    ]


def test_every_recorded_answer_through_the_sender(world, braze):
    runtime, send, sender = world
    for case in load_cases():
        start = len(braze.received_objects)
        try:
            body = json.loads(case.content)
        except ValueError:
            body = case.content
        braze.answer_next(Canned(status=case.status, body=body, headers=case.headers))
        send(*_case_profiles(case))
        drain(sender, runtime.engine, timeout_s=20)
        assert braze.canned_left == 0, case.id
        first = braze.received_objects[start : start + case.sent]
        for position, verdict in enumerate(case.expect):
            obj = first[position]
            eid = obj["external_id"]
            writes = sent_objects(braze, eid, start)
            with runtime.engine.connect() as conn:
                state, reason = conn.execute(
                    sa.select(outbox.c.state, outbox.c.last_reason).where(
                        outbox.c.external_id == eid
                    )
                ).one_or_none() or (None, None)
            label = f"{case.id}[{position}] {verdict}"
            if verdict == "ack":
                assert len(writes) == 1, label  # never written twice
            if verdict.startswith("dead:"):
                assert (state, reason, len(writes)) == (OutboxState.DEAD, verdict[5:], 1), label
                assert eid not in braze.users, label
                continue
            assert state is None, label  # delivered: nothing left in the outbox
            assert {k: braze.users[eid].get(k) for k in MEMBER} == MEMBER, label
            if verdict.startswith("drop:"):
                fields = verdict.split(":")[1].split(",")
                if all(f in obj for f in fields):
                    (flags,) = row_of(runtime.engine, braze_users, eid, "flags")
                    assert {flag_for(f) for f in fields} <= set(flags), label
                    for f in fields:
                        assert sum(f in w for w in writes) == 1, label  # refused once, not resent
    assert braze.violations == []
