"""The pure core: desired attributes, the minimal diff, guards and data points (SPEC §4)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.core.attributes import (
    ARRAY_ATTRIBUTE,
    FLAG_ARRAY_TOO_LONG,
    FLAG_ATTRIBUTE_NAME_TOO_LONG,
    FLAG_STRING_TOO_LONG,
    KEEP,
    STRING_ATTRIBUTE,
    Contribution,
    Membership,
    desired_attributes,
    diff,
)
from audience_sync.core.connection import parse_send_segments_as
from audience_sync.core.datapoints import datapoints_of

ALL_MODES = [
    "+".join(combo)
    for n in (1, 2, 3)
    for combo in itertools.combinations(["string", "array", "per_segment"], n)
]
NAMES = {11034: "Ibiza Dreamers", 11036: "Aspiring Athenians", 7: "Sevens"}


def member(audience_id: int, is_member: bool = True) -> Membership:
    return Membership(audience_id=audience_id, name=NAMES[audience_id], is_member=is_member)


def contribution(mode: str, *memberships: Membership, account_id: int = 1, **kw) -> Contribution:
    return Contribution(
        account_id=account_id,
        parts=parse_send_segments_as(mode),
        memberships=memberships,
        **kw,
    )


def write_for(mode, memberships, acknowledged=None, array_write="delta", **kw):
    desired = desired_attributes([contribution(mode, *memberships, **kw)], array_max_length=500)
    return diff("user-42", desired, acknowledged or {}, array_write=array_write)


def apply_like_braze(state: dict, obj: dict) -> dict:
    """What Braze holds after applying one attributes object (the test's model of Braze)."""
    state = dict(state)
    for key, value in obj.items():
        if key in ("external_id", "_update_existing_only"):
            continue
        if value is None:
            state.pop(key, None)
        elif isinstance(value, dict) and ("add" in value or "remove" in value):
            current = list(state.get(key) or [])
            current += [v for v in value.get("add", []) if v not in current]
            current = [v for v in current if v not in value.get("remove", [])]
            state[key] = current
        elif key == "push_tokens":
            state[key] = sorted(
                {(p[0], p[1]) for p in state.get(key, [])}
                | {(p["app_id"], p["token"]) for p in value}
            )
        else:
            state[key] = value
    return state


# --- formats, one row per mode: first write for a user in two audiences ------------------------

FIRST_WRITE = {
    "string": {STRING_ATTRIBUTE: "'11034','11036'"},
    "array": {ARRAY_ATTRIBUTE: {"add": ["11034", "11036"]}},
    "per_segment": {"In Ibiza Dreamers": True, "In Aspiring Athenians": True},
}


@pytest.mark.parametrize("mode", ALL_MODES, ids=ALL_MODES)
def test_first_write_in_every_mode(mode):
    write = write_for(mode, [member(11036), member(11034)])
    expected = {"external_id": "user-42"}
    for part in mode.split("+"):
        expected.update(FIRST_WRITE[part])
    assert write.attributes == expected
    assert write.datapoints == datapoints_of(write.attributes)


@pytest.mark.parametrize("mode", ALL_MODES, ids=ALL_MODES)
def test_second_diff_after_acknowledgement_is_empty(mode):
    first = write_for(mode, [member(11036), member(11034)])
    second = write_for(mode, [member(11036), member(11034)], first.acknowledged)
    assert second.is_empty
    assert second.datapoints == 0


@pytest.mark.parametrize(
    ("mode", "acknowledged", "expected"),
    [
        (
            "string",
            {STRING_ATTRIBUTE: "'11034','11036'"},
            {STRING_ATTRIBUTE: "'11036'"},
        ),
        ("array", {ARRAY_ATTRIBUTE: ["11034", "11036"]}, {ARRAY_ATTRIBUTE: {"remove": ["11034"]}}),
        (
            "per_segment",
            {"In Ibiza Dreamers": True, "In Aspiring Athenians": True},
            {"In Ibiza Dreamers": False},
        ),
    ],
    ids=["string", "array", "per_segment"],
)
def test_leaving_one_audience(mode, acknowledged, expected):
    write = write_for(mode, [member(11034, False), member(11036)], acknowledged)
    assert write.attributes == {"external_id": "user-42", **expected}


def test_leaving_the_last_audience_clears_the_string_with_null():
    write = write_for("string", [member(11034, False)], {STRING_ATTRIBUTE: "'11034'"})
    assert write.attributes == {"external_id": "user-42", STRING_ATTRIBUTE: None}
    assert STRING_ATTRIBUTE not in write.acknowledged
    assert write.datapoints == 1


def test_leaving_the_last_audience_removes_from_the_array_in_delta_mode():
    write = write_for("array", [member(11034, False)], {ARRAY_ATTRIBUTE: ["11034"]})
    assert write.attributes == {"external_id": "user-42", ARRAY_ATTRIBUTE: {"remove": ["11034"]}}
    assert write.acknowledged[ARRAY_ATTRIBUTE] == []


def test_full_array_mode_sends_the_whole_array_for_one_data_point():
    write = write_for(
        "array", [member(11034), member(7)], {ARRAY_ATTRIBUTE: ["11036"]}, array_write="full"
    )
    assert write.attributes == {"external_id": "user-42", ARRAY_ATTRIBUTE: ["7", "11034"]}
    assert write.datapoints == 1
    empty = write_for("array", [member(7, False)], {ARRAY_ATTRIBUTE: ["7"]}, array_write="full")
    assert empty.attributes == {"external_id": "user-42", ARRAY_ATTRIBUTE: None}


def test_ids_are_in_ascending_numeric_order_not_text_order():
    write = write_for("string+array", [member(11034), member(7)])
    assert write.attributes[STRING_ATTRIBUTE] == "'7','11034'"
    assert write.attributes[ARRAY_ATTRIBUTE] == {"add": ["7", "11034"]}


@pytest.mark.parametrize("mode", ALL_MODES, ids=ALL_MODES)
def test_enter_then_exit_before_the_write_costs_nothing(mode):
    write = write_for(mode, [member(11034, False)])
    assert write.is_empty
    assert write.datapoints == 0


def test_rename_sets_new_name_true_and_old_name_null_in_one_write():
    renamed = Membership(audience_id=11034, name="Ibiza Dreamers 2025", is_member=True)
    write = write_for("per_segment", [renamed], {"In Ibiza Dreamers": True})
    assert write.attributes == {
        "external_id": "user-42",
        "In Ibiza Dreamers 2025": True,
        "In Ibiza Dreamers": None,
    }
    assert write.datapoints == 2


def test_mode_change_adds_new_parts_and_clears_old_ones():
    acknowledged = {STRING_ATTRIBUTE: "'11034'", "In Ibiza Dreamers": True}
    write = write_for("array", [member(11034)], acknowledged)
    assert write.attributes == {
        "external_id": "user-42",
        STRING_ATTRIBUTE: None,
        ARRAY_ATTRIBUTE: {"add": ["11034"]},
        "In Ibiza Dreamers": None,
    }
    assert write.acknowledged == {ARRAY_ATTRIBUTE: ["11034"]}


def test_audience_names_are_trimmed_like_braze():
    m = Membership(audience_id=1, name="  Spaced Out ", is_member=True)
    write = write_for("per_segment", [m])
    assert write.attributes == {"external_id": "user-42", "In Spaced Out": True}


def test_connections_sharing_a_workspace_write_the_union():
    desired = desired_attributes(
        [
            contribution("string+array", member(11034), account_id=1),
            contribution("string", member(7), member(11036, False), account_id=2),
        ],
        array_max_length=500,
    )
    write = diff("u", desired, {})
    assert write.attributes[STRING_ATTRIBUTE] == "'7','11034'"
    assert write.attributes[ARRAY_ATTRIBUTE] == {"add": ["11034"]}


def test_string_longer_than_255_is_not_written_but_other_parts_go():
    audiences = [
        Membership(audience_id=10_000_000 + i, name=f"A{i}", is_member=True) for i in range(30)
    ]
    desired = desired_attributes(
        [contribution("string+per_segment", *audiences)], array_max_length=500
    )
    assert desired.attributes[STRING_ATTRIBUTE] is KEEP
    assert FLAG_STRING_TOO_LONG in desired.flags
    write = diff("u", desired, {STRING_ATTRIBUTE: "'1'"})
    assert STRING_ATTRIBUTE not in write.attributes
    assert write.acknowledged[STRING_ATTRIBUTE] == "'1'"
    assert write.attributes["In A0"] is True


def test_more_audiences_than_the_array_limit_are_not_written():
    audiences = [Membership(audience_id=i, name=f"A{i}", is_member=True) for i in range(26)]
    desired = desired_attributes([contribution("array", *audiences)], array_max_length=25)
    assert FLAG_ARRAY_TOO_LONG in desired.flags
    assert diff("u", desired, {}).is_empty


def test_attribute_names_longer_than_255_are_skipped():
    m = Membership(audience_id=1, name="x" * 253, is_member=True)
    desired = desired_attributes([contribution("per_segment", m)], array_max_length=500)
    assert FLAG_ATTRIBUTE_NAME_TOO_LONG in desired.flags
    assert diff("u", desired, {}).is_empty


def test_email_written_only_when_changed_and_never_cleared():
    c = contribution("string", member(7), email="a@example.com")
    desired = desired_attributes([c], array_max_length=500)
    assert diff("u", desired, {"email": "a@example.com", STRING_ATTRIBUTE: "'7'"}).is_empty
    assert diff("u", desired, {"email": "old@example.com", STRING_ATTRIBUTE: "'7'"}).attributes == {
        "external_id": "u",
        "email": "a@example.com",
    }
    no_email = desired_attributes([contribution("string", member(7))], array_max_length=500)
    assert diff("u", no_email, {"email": "a@example.com", STRING_ATTRIBUTE: "'7'"}).is_empty


def test_new_push_tokens_are_sent_once_and_free():
    c = contribution("string", member(7), api_key="app-1", push_tokens=("tok-a",))
    desired = desired_attributes([c], array_max_length=500)
    first = diff("u", desired, {STRING_ATTRIBUTE: "'7'"})
    assert first.attributes == {
        "external_id": "u",
        "push_tokens": [{"app_id": "app-1", "token": "tok-a"}],
    }
    assert first.datapoints == 0
    assert diff("u", desired, first.acknowledged).is_empty


def test_update_existing_only_flag_is_sent_with_a_write():
    write = write_for("string", [member(7)], update_existing_only=True)
    assert write.attributes["_update_existing_only"] is True
    assert write_for("string", [member(7)], write.acknowledged, update_existing_only=True).is_empty


def test_true_and_one_are_different_values():
    write = write_for("per_segment", [member(7)], {"In Sevens": 1})
    assert write.attributes == {"external_id": "user-42", "In Sevens": True}


def as_sets(state: dict) -> dict:
    """Braze appends to arrays; the order of an array attribute carries no meaning here."""
    return {k: (frozenset(map(str, v)) if isinstance(v, list) else v) for k, v in state.items()}


# --- property: whatever the history, one write brings Braze to the desired state --------------

memberships_strategy = st.lists(
    st.tuples(st.sampled_from(sorted(NAMES)), st.booleans()), max_size=6
).map(lambda pairs: list({a: member(a, m) for a, m in pairs}.values()))


@settings(max_examples=300, deadline=None)
@given(
    before=memberships_strategy,
    after=memberships_strategy,
    mode_before=st.sampled_from(ALL_MODES),
    mode_after=st.sampled_from(ALL_MODES),
    array_write=st.sampled_from(["delta", "full"]),
)
def test_one_write_converges_braze_to_desired(before, after, mode_before, mode_after, array_write):
    first = write_for(mode_before, before, array_write=array_write)
    braze = apply_like_braze({}, first.attributes)
    assert as_sets(braze) == as_sets(first.acknowledged)

    second = write_for(mode_after, after, first.acknowledged, array_write=array_write)
    braze = apply_like_braze(braze, second.attributes)
    assert as_sets(braze) == as_sets(second.acknowledged)
    assert second.datapoints == datapoints_of(second.attributes)
    # Converged: nothing more to send, and what Braze holds is what is desired.
    assert write_for(mode_after, after, braze, array_write=array_write).is_empty
    desired = desired_attributes([contribution(mode_after, *after)], array_max_length=500)
    for key, value in desired.attributes.items():
        if value is KEEP or value is False or value == []:
            continue
        held = braze.get(key)
        assert sorted(held) == sorted(value) if isinstance(value, list) else held == value


# --- property: unconfirmed writes (5xx after apply, dropped answers, crashes) ------------------

OUTCOMES = ["confirmed", "applied_unknown", "lost_unknown", "refused"]


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(
        st.tuples(memberships_strategy, st.sampled_from(OUTCOMES)), min_size=1, max_size=8
    ),
    mode=st.sampled_from(ALL_MODES),
    array_write=st.sampled_from(["delta", "full"]),
)
def test_unconfirmed_writes_never_leave_braze_wrong(steps, mode, array_write):
    """Each step changes the desired state, then one write is attempted with an outcome:
    confirmed; applied but the answer lost; not applied and the answer lost; refused (4xx/429).
    Once a write is confirmed with nothing left to send, Braze equals the desired state."""
    from audience_sync.core.attributes import NOTHING_UNCERTAIN, touched

    braze: dict = {}
    acknowledged: dict = {}
    uncertain = NOTHING_UNCERTAIN
    memberships = []
    for memberships, outcome in steps:
        desired = desired_attributes([contribution(mode, *memberships)], array_max_length=500)
        write = diff("u", desired, acknowledged, array_write=array_write, uncertain=uncertain)
        if write.is_empty:
            continue
        if outcome in ("confirmed", "applied_unknown"):
            braze = apply_like_braze(braze, write.attributes)
        if outcome == "confirmed":
            acknowledged, uncertain = dict(write.acknowledged), NOTHING_UNCERTAIN
        elif outcome in ("applied_unknown", "lost_unknown"):
            uncertain = uncertain | touched(write)
    desired = desired_attributes([contribution(mode, *memberships)], array_max_length=500)
    final = diff("u", desired, acknowledged, array_write=array_write, uncertain=uncertain)
    braze = apply_like_braze(braze, final.attributes)
    assert diff("u", desired, final.acknowledged, array_write=array_write).is_empty
    want = {k: v for k, v in desired.attributes.items() if v is not KEEP}
    for key in set(want) | set(braze):
        held, value = braze.get(key), want.get(key)
        if isinstance(value, list) or isinstance(held, list):
            assert set(held or []) == set(value or []), key
        elif value is False and held is None:
            continue  # "In X" never written true
        else:
            assert held == value, key


def test_an_uncertain_value_is_written_again_even_when_acknowledged_says_so():
    from audience_sync.core.attributes import Uncertain

    desired = desired_attributes([contribution("string+array", member(7))], array_max_length=500)
    ack = {STRING_ATTRIBUTE: "'7'", ARRAY_ATTRIBUTE: ["7"]}
    assert diff("u", desired, ack).is_empty
    unsure = Uncertain(keys=frozenset({STRING_ATTRIBUTE}), values=frozenset({"7", "9"}))
    write = diff("u", desired, ack, uncertain=unsure)
    assert write.attributes == {
        "external_id": "u",
        STRING_ATTRIBUTE: "'7'",
        ARRAY_ATTRIBUTE: {"add": ["7"], "remove": ["9"]},
    }
