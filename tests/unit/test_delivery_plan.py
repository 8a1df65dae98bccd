"""The pure delivery plan: which claimed users wait, finish or get a write; what a failure
becomes under the retry policy."""

from __future__ import annotations

import pytest

from audience_sync.core.attributes import STRING_ATTRIBUTE
from audience_sync.core.connection import parse_connection_settings
from audience_sync.core.delivery_plan import (
    WAIT_FOR_CONNECTION_S,
    FailedWrite,
    accepted_rows,
    fail_all,
    plan_batch,
    plan_failures,
)
from audience_sync.core.retry import RetryPolicy
from audience_sync.core.state import Acknowledged, Claim, ConnectionRow, Desired, Snapshot
from audience_sync.core.states import ConnectionState, DeliveryCounter, DeliveryOutcome

NOW = 1_000.0
WS = 3
ACTIVE_ACCOUNT, BLOCKED_ACCOUNT = 1, 2
POLICY = RetryPolicy(base_s=2, cap_s=60, retry_window_s=3600, max_attempts=3)


def claim(external_id, attempts=0, first_failure_at=None, in_flight=None):
    return Claim(
        workspace_id=WS,
        external_id=external_id,
        generation=1,
        attempts=attempts,
        first_failure_at=first_failure_at,
        in_flight=in_flight,
    )


def connection_row(account_id, state=ConnectionState.ACTIVE):
    return ConnectionRow(
        account_id=account_id, account_settings={}, settings_fingerprint="fp", state=state
    )


def desired(account_id, *audiences):
    return Desired(account_id=account_id, memberships=tuple((a, f"A{a}", True) for a in audiences))


def snapshot(desired_by_user, acknowledged=None, connections=(ACTIVE_ACCOUNT,)):
    return Snapshot(
        connections=tuple(connection_row(a) for a in connections),
        desired={u: tuple(rows) for u, rows in desired_by_user.items()},
        acknowledged=acknowledged or {},
        audience_accounts={},
    )


ACTIVE = {ACTIVE_ACCOUNT: parse_connection_settings(ACTIVE_ACCOUNT, {"restApiKey": "k"})}


def plan(snap, claims, min_resend_s=3.0):
    return plan_batch(
        claims,
        snap,
        ACTIVE,
        now=NOW,
        min_resend_s=min_resend_s,
        array_max_length=500,
        array_write="delta",
    )


def test_a_new_member_gets_a_write_with_its_write_ahead_record():
    result = plan(snapshot({"u1": [desired(ACTIVE_ACCOUNT, 7)]}), [claim("u1")])
    (pending,) = result.pending
    assert pending.write.attributes[STRING_ATTRIBUTE] == "'7'"
    assert pending.in_flight_before() is None  # nothing was uncertain before
    assert STRING_ATTRIBUTE in str(pending.in_flight_during())
    assert (result.unchanged, result.deferred, result.held_back) == ((), {}, {})


def test_a_user_already_acknowledged_is_finished_without_a_write():
    first = plan(snapshot({"u1": [desired(ACTIVE_ACCOUNT, 7)]}), [claim("u1")]).pending[0]
    ack = Acknowledged(attributes=first.write.acknowledged, flags=())
    result = plan(snapshot({"u1": [desired(ACTIVE_ACCOUNT, 7)]}, {"u1": ack}), [claim("u1")])
    assert result.pending == ()
    assert [(r.external_id, r.outcome, r.wrote) for r in result.unchanged] == [
        ("u1", DeliveryOutcome.UNCHANGED, False)
    ]
    assert result.changed_acks == ()  # the acknowledged row is already right


@pytest.mark.parametrize(
    ("last_write_at", "deferred_to"),
    [
        pytest.param(NOW - 1, NOW + 2, id="too-soon"),
        pytest.param(NOW - 3, None, id="spacing-passed"),
        pytest.param(None, None, id="never-written"),
    ],
)
def test_resend_spacing_defers_a_user_to_its_next_allowed_write(last_write_at, deferred_to):
    ack = Acknowledged(attributes={}, last_write_at=last_write_at)
    result = plan(snapshot({"u1": [desired(ACTIVE_ACCOUNT, 7)]}, {"u1": ack}), [claim("u1")])
    assert result.deferred == ({"u1": deferred_to} if deferred_to is not None else {})
    assert len(result.pending) == (0 if deferred_to is not None else 1)


def test_users_of_a_connection_with_invalid_settings_wait_for_it():
    snap = snapshot(
        {"u1": [desired(ACTIVE_ACCOUNT, 7), desired(BLOCKED_ACCOUNT, 8)], "u2": [desired(1, 7)]},
        connections=(ACTIVE_ACCOUNT, BLOCKED_ACCOUNT),
    )
    result = plan(snap, [claim("u1"), claim("u2")])
    assert result.held_back == {"u1": NOW + WAIT_FOR_CONNECTION_S}
    assert [p.external_id for p in result.pending] == ["u2"]


def test_users_with_the_same_inputs_share_one_computed_write():
    snap = snapshot({u: [desired(ACTIVE_ACCOUNT, 7)] for u in ("a", "b")})
    a, b = plan(snap, [claim("a"), claim("b")]).pending
    assert (a.write.external_id, b.write.external_id) == ("a", "b")
    assert a.write.attributes["external_id"] == "a" and b.write.attributes["external_id"] == "b"
    assert {k: v for k, v in a.write.attributes.items() if k != "external_id"} == {
        k: v for k, v in b.write.attributes.items() if k != "external_id"
    }


def _pending(attempts=0, first_failure_at=None, in_flight=None):
    snap = snapshot({"u1": [desired(ACTIVE_ACCOUNT, 7)]})
    c = claim("u1", attempts=attempts, first_failure_at=first_failure_at, in_flight=in_flight)
    return plan(snap, [c]).pending[0]


@pytest.mark.parametrize(
    ("permanent", "maybe_applied", "attempts", "first_failure_at", "retry_at", "dead"),
    [
        pytest.param(True, False, 0, None, None, True, id="permanent-dead-now"),
        pytest.param(False, True, 0, None, NOW + 2, False, id="first-transient-retries"),
        pytest.param(False, False, 1, NOW - 10, NOW + 4, False, id="second-transient-backs-off"),
        pytest.param(False, True, 2, NOW - 10, NOW + 8, False, id="attempts-spent-only"),
        pytest.param(False, True, 0, NOW - 3600, NOW + 2, False, id="window-spent-only"),
        pytest.param(False, True, 2, NOW - 3600, None, True, id="both-spent-dead"),
    ],
)
def test_failures_follow_the_one_retry_policy(
    permanent, maybe_applied, attempts, first_failure_at, retry_at, dead
):
    pending = _pending(attempts, first_failure_at)
    failed = FailedWrite(
        pending=pending, permanent=permanent, reason="boom", maybe_applied=maybe_applied
    )
    result = plan_failures([failed], POLICY, now=NOW, jitters=[0.999999])
    (failure,) = result.failures
    assert failure.attempts == attempts + 1
    assert failure.first_failure_at == (first_failure_at or NOW)
    assert failure.retry_at == (pytest.approx(retry_at, abs=1e-3) if retry_at else None)
    # What Braze may have applied stays uncertain; a refusal restores the earlier record.
    expected = pending.in_flight_during() if maybe_applied else pending.in_flight_before()
    assert failure.in_flight == expected
    assert result.dead == ((failure,) if dead else ())
    assert result.counts == {"boom": 1, **({DeliveryCounter.DEAD_LETTERED: 1} if dead else {})}


def test_fail_all_and_accepted_rows():
    pending = _pending()
    (failed,) = fail_all([pending], permanent=True, reason="r", maybe_applied=False)
    assert (failed.pending, failed.permanent, failed.reason) == (pending, True, "r")
    rows, charges = accepted_rows([pending])
    assert [(r.external_id, r.outcome, r.wrote) for r in rows] == [
        ("u1", DeliveryOutcome.ACCEPTED, True)
    ]
    assert sum(charges.values()) == pending.write.datapoints
