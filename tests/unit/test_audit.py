"""The audit's comparison (core, pure): drift kinds, audiences, and the repaired state."""

from __future__ import annotations

import pytest

from audience_sync.core.audit import DriftKind, Finding, Observed, audit_user

ACK = {
    "SegmentMembership": "'11','12'",
    "SegmentMembershipArray": ["11", "12"],
    "In Eleven": True,
    "In Twelve": True,
    "email": "a@example.com",
    "push_tokens": [["app", "tok"]],
}
KEYS = {"In Eleven": 11, "In Twelve": 12}
BRAZE = {k: v for k, v in ACK.items() if k not in ("email", "push_tokens")}


def observed(**changes):
    attributes = {**BRAZE, **changes}
    return Observed(
        custom_attributes={k: v for k, v in attributes.items() if v is not None},
        email="a@example.com",
    )


CASES = [
    pytest.param(observed(), (), None, id="in-sync"),
    pytest.param(
        observed(SegmentMembership=None),
        (Finding(kind=DriftKind.VALUE_MISSING, key="SegmentMembership", audience_ids=(11, 12)),),
        {"SegmentMembership": None},
        id="string-dropped",
    ),
    pytest.param(
        observed(SegmentMembership="'11'"),
        (Finding(kind=DriftKind.VALUE_CHANGED, key="SegmentMembership", audience_ids=(12,)),),
        {"SegmentMembership": "'11'"},
        id="string-edited",
    ),
    pytest.param(
        observed(**{"In Eleven": False}),
        (Finding(kind=DriftKind.VALUE_CHANGED, key="In Eleven", audience_ids=(11,)),),
        {"In Eleven": False},
        id="boolean-flipped",
    ),
    pytest.param(
        observed(SegmentMembershipArray=["12", "11", "99"]),
        (Finding(kind=DriftKind.ARRAY_EXTRA, key="SegmentMembershipArray", audience_ids=(99,)),),
        {"SegmentMembershipArray": ["12", "11", "99"]},
        id="stray-array-value",
    ),
    pytest.param(
        observed(SegmentMembershipArray=["12"]),
        (Finding(kind=DriftKind.ARRAY_MISSING, key="SegmentMembershipArray", audience_ids=(11,)),),
        {"SegmentMembershipArray": ["12"]},
        id="array-value-gone",
    ),
    pytest.param(
        observed(SegmentMembershipArray=["11", "12"], Other="kept"),
        (),
        None,
        id="other-tools-attributes-ignored",
    ),
]


@pytest.mark.parametrize(("actual", "findings", "repaired_changes"), CASES)
def test_drift_and_repair(actual, findings, repaired_changes):
    result = audit_user(
        "u", acknowledged=ACK, actual=actual, managed_keys=set(), audience_of_key=KEYS
    )
    assert result.findings == findings
    if repaired_changes is None:
        assert result.repaired is None
        return
    expected = dict(ACK)
    for key, value in repaired_changes.items():
        if value is None:
            expected.pop(key)
        else:
            expected[key] = value
    assert result.repaired == expected


def test_a_user_braze_does_not_know_is_missing_and_resent_in_full():
    result = audit_user(
        "u", acknowledged=ACK, actual=None, managed_keys=set(), audience_of_key=KEYS
    )
    assert result.findings == (
        Finding(kind=DriftKind.MISSING_IN_BRAZE, key="", audience_ids=(11, 12)),
    )
    assert result.repaired == {}  # push tokens too


def test_a_user_never_written_is_not_missing():
    assert not audit_user("u", acknowledged={}, actual=None, managed_keys={"In X"}).drifted


def test_an_unacknowledged_managed_attribute_is_unexpected():
    result = audit_user(
        "u",
        acknowledged={},
        actual=Observed(custom_attributes={"SegmentMembership": "'5'"}),
        managed_keys={"SegmentMembership"},
    )
    assert result.findings == (
        Finding(kind=DriftKind.UNEXPECTED_VALUE, key="SegmentMembership", audience_ids=(5,)),
    )
    assert result.repaired == {"SegmentMembership": "'5'"}


@pytest.mark.parametrize(
    ("acked", "held", "drifted"),
    [
        pytest.param([], None, False, id="empty-array-is-absent"),
        pytest.param(None, [], False, id="absent-is-empty-array"),
        pytest.param(True, 1, True, id="true-is-not-1"),
    ],
)
def test_equivalences(acked, held, drifted):
    key = "SegmentMembershipArray" if acked in ([], None) else "In X"
    acknowledged = {} if acked is None else {key: acked}
    custom = {} if held is None else {key: held}
    result = audit_user(
        "u",
        acknowledged=acknowledged,
        actual=Observed(custom_attributes=custom),
        managed_keys={key},
    )
    assert result.drifted is drifted


def test_email_case_is_not_drift_but_another_address_is():
    ack = {"email": "A@Example.com"}
    same = audit_user(
        "u", acknowledged=ack, actual=Observed(email="a@example.com"), managed_keys=()
    )
    other = audit_user(
        "u", acknowledged=ack, actual=Observed(email="b@example.com"), managed_keys=()
    )
    assert not same.drifted
    assert other.findings == (Finding(kind=DriftKind.VALUE_CHANGED, key="email"),)
