"""Refused field values (SPEC §5.3): remembered by fingerprint, withheld until they change, and
the request split by verdict into acknowledged, failed, refused and resent writes."""

from __future__ import annotations

import pytest

from audience_sync.core.answer_plan import ObjectVerdict, plan_answer
from audience_sync.core.attributes import EMAIL_KEY, PUSH_TOKENS_KEY, STRING_ATTRIBUTE
from audience_sync.core.connection import parse_connection_settings
from audience_sync.core.delivery_plan import plan_batch
from audience_sync.core.field_flags import FieldFlag, fingerprint, flags_of_refusal, withheld
from audience_sync.core.state import Acknowledged, Claim, ConnectionRow, Desired, Snapshot
from audience_sync.core.states import ConnectionState, ObjectAction

NOW = 1_000.0
ACCOUNT = 1
SETTINGS = {
    ACCOUNT: parse_connection_settings(
        ACCOUNT, {"restApiKey": "k", "apiKey": "app", "apiKeyOperatingSystem": "ios"}
    )
}
BAD = "not-an-email"


def claim(external_id):
    return Claim(
        workspace_id=3, external_id=external_id, generation=1, attempts=0, first_failure_at=None
    )


def snapshot(email=BAD, tokens=(), flags=None, acknowledged=None):
    desired = Desired(
        account_id=ACCOUNT,
        email=email,
        push_tokens=tuple(tokens),
        memberships=((7, "A7", True),),
    )
    return Snapshot(
        connections=(
            ConnectionRow(
                account_id=ACCOUNT,
                account_settings={},
                settings_fingerprint="f",
                state=ConnectionState.ACTIVE,
            ),
        ),
        desired={"u1": (desired,), "u2": (desired,)},
        acknowledged=acknowledged or {},
        audience_accounts={},
        field_flags=flags or {},
    )


def plan(snap, *ids):
    return plan_batch(
        [claim(i) for i in ids or ("u1",)],
        snap,
        SETTINGS,
        now=NOW,
        min_resend_s=0,
        array_max_length=500,
        array_write="delta",
    )


def email_flag(value=BAD):
    return FieldFlag(field=EMAIL_KEY, fingerprint=fingerprint(value), flag="invalid_email")


def test_fingerprint_ignores_key_order_and_tells_values_apart():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint("a@example.com") != fingerprint("b@example.com")
    assert fingerprint(True) != fingerprint(1)


@pytest.mark.parametrize(
    ("sent", "refused", "expected"),
    [
        pytest.param({EMAIL_KEY: BAD}, {EMAIL_KEY: "invalid_email"}, (email_flag(),), id="email"),
        pytest.param({"x": 1}, {EMAIL_KEY: "invalid_email"}, None, id="field-not-sent"),
        pytest.param({EMAIL_KEY: BAD}, {}, None, id="nothing-refused"),
    ],
)
def test_flags_of_refusal(sent, refused, expected):
    assert flags_of_refusal(sent, refused) == expected


def test_withheld_only_while_the_value_is_the_refused_one():
    assert withheld({EMAIL_KEY: BAD}, (email_flag(),)) == (email_flag(),)
    assert withheld({EMAIL_KEY: "ok@example.com"}, (email_flag(),)) == ()
    assert withheld({STRING_ATTRIBUTE: "'7'"}, (email_flag(),)) == ()


def test_a_refused_email_is_left_out_and_the_membership_still_goes():
    result = plan(snapshot(flags={"u1": (email_flag(),)}), "u1", "u2")
    flagged, other = result.pending
    assert EMAIL_KEY not in flagged.write.attributes
    assert flagged.write.attributes[STRING_ATTRIBUTE] == "'7'"
    assert EMAIL_KEY not in flagged.write.acknowledged
    assert "invalid_email" in flagged.flags
    # The user next to it, with the same inputs but no refusal, still sends its email.
    assert other.write.attributes[EMAIL_KEY] == BAD
    assert "invalid_email" not in other.flags
    assert result.new_flags == {"invalid_email": 1}


def test_a_changed_email_is_sent_and_the_flag_goes():
    (pending,) = plan(snapshot(email="ok@example.com", flags={"u1": (email_flag(),)})).pending
    assert pending.write.attributes[EMAIL_KEY] == "ok@example.com"
    assert "invalid_email" not in pending.flags


def test_a_refused_email_alone_needs_no_write_and_is_recorded_flagged():
    ack = Acknowledged(attributes={STRING_ATTRIBUTE: "'7'"})
    result = plan(snapshot(flags={"u1": (email_flag(),)}, acknowledged={"u1": ack}))
    assert result.pending == ()
    (row,) = result.unchanged
    assert "invalid_email" in row.flags
    assert result.changed_acks == (row,)


def test_refused_push_tokens_are_withheld_until_a_new_token_comes():
    first = plan(snapshot(email=None, tokens=["t1"])).pending[0]
    sent = first.write.attributes[PUSH_TOKENS_KEY]
    flag = FieldFlag(
        field=PUSH_TOKENS_KEY, fingerprint=fingerprint(sent), flag="invalid_push_token"
    )
    (held,) = plan(snapshot(email=None, tokens=["t1"], flags={"u1": (flag,)})).pending
    assert PUSH_TOKENS_KEY not in held.write.attributes
    assert "invalid_push_token" in held.flags
    (again,) = plan(snapshot(email=None, tokens=["t1", "t2"], flags={"u1": (flag,)})).pending
    assert PUSH_TOKENS_KEY in again.write.attributes


def test_plan_answer_splits_a_request_by_verdict():
    pending = plan(snapshot(), "u1", "u2").pending * 3  # six positions; u1/u2 alternate
    verdicts = {
        1: ObjectVerdict(action=ObjectAction.DEAD_LETTER, reason="external_id_too_large"),
        2: ObjectVerdict(
            action=ObjectAction.DROP_FIELDS,
            reason="invalid_email",
            refused={EMAIL_KEY: "invalid_email"},
        ),
        3: ObjectVerdict(
            action=ObjectAction.DROP_FIELDS,
            reason="invalid_attribute",
            refused={"email_subscribe": "invalid_attribute"},
        ),
        4: ObjectVerdict(action=ObjectAction.RESEND, reason="bad_request"),
        5: ObjectVerdict(action=ObjectAction.RETRY, reason="object_error", maybe_applied=True),
    }
    answer = plan_answer(pending, verdicts)
    assert answer.accepted == (pending[0],)
    assert [(f.pending, f.permanent, f.reason, f.maybe_applied) for f in answer.failed] == [
        (pending[1], True, "external_id_too_large", False),
        # A refused field that was not sent cannot be left out: retried as any failure.
        (pending[3], False, "invalid_attribute", False),
        (pending[5], False, "object_error", True),
    ]
    (refused,) = answer.refused
    assert (refused.pending, refused.flags, refused.reason) == (
        pending[2],
        (email_flag(),),
        "invalid_email",
    )
    assert answer.resend == (pending[4],)
