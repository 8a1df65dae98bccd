"""Folding a membership request into one update per user (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from audience_sync.core.connection import parse_connection_settings
from audience_sync.core.identity import Identity
from audience_sync.core.membership import merge_push_tokens, plan_membership_changes
from audience_sync.firehose import testing as ft
from audience_sync.firehose.validation import load_message


def settings(**overrides):
    return parse_connection_settings(1, ft.account_settings(**overrides))


def plan_for(profiles, **setting_overrides):
    message = load_message(ft.membership_request(1, profiles))
    return plan_membership_changes(settings(**setting_overrides), message.user_profiles)


def test_later_entries_win_and_attribute_update_changes_nothing():
    plan = plan_for(
        [
            ft.profile("u1", [ft.audience_change(10, "add"), ft.audience_change(11, "add")]),
            ft.profile("u1", [ft.audience_change(10, "delete")], email="u1@example.com"),
            ft.profile("u2", [ft.audience_change(12, "attribute_update")]),
        ]
    )
    assert plan.memberships == {("u1", 10): False, ("u1", 11): True}
    assert set(plan.users) == {"u1", "u2"}
    assert plan.users["u1"].email == "u1@example.com"
    assert plan.audience_names == {10: "Audience 10", 11: "Audience 11", 12: "Audience 12"}


def test_unresolved_profiles_are_counted_by_reason():
    plan = plan_for(
        [
            ft.profile(None, [ft.audience_change(10)], email="only@example.com"),
            ft.profile(
                None,
                [ft.audience_change(10)],
                extra_identities=[ft.identity("customer", "ab", "md5")],
            ),
            ft.profile("x" * 988, [ft.audience_change(10)]),
            ft.profile("ok", [ft.audience_change(10)]),
        ]
    )
    assert dict(plan.unresolved) == {"no_external_id": 2, "external_id_too_large": 1}
    assert plan.memberships == {("ok", 10): True}


def test_email_is_kept_from_an_earlier_profile_when_a_later_one_has_none():
    plan = plan_for([ft.profile("u1", [], email="a@example.com", mpid="7"), ft.profile("u1", [])])
    assert (plan.users["u1"].email, plan.users["u1"].mpid) == ("a@example.com", "7")


def test_push_tokens_follow_the_operating_system():
    profiles = [ft.profile("u1", [], apns_token="apns-1", gcm_token="gcm-1")]
    assert plan_for(profiles).users["u1"].push_tokens == []
    assert plan_for(profiles, apiKeyOperatingSystem="ios").users["u1"].push_tokens == ["apns-1"]
    assert plan_for(profiles, apiKeyOperatingSystem="android").users["u1"].push_tokens == ["gcm-1"]


def test_mpid_as_external_identity():
    plan = plan_for(
        [ft.profile(None, [ft.audience_change(3)], mpid="42")], externalIdentityType="mpid"
    )
    assert plan.memberships == {("42", 3): True}


@pytest.mark.parametrize(
    ("stored", "new", "expected"),
    [
        pytest.param([], ["a"], ["a"], id="first"),
        pytest.param(["a", "b"], ["b", "c"], ["a", "b", "c"], id="re-sent-becomes-newest"),
        pytest.param(["b", "a"], ["b"], ["a", "b"], id="order"),
        pytest.param(
            [str(i) for i in range(10)], ["x"], [*(str(i) for i in range(1, 10)), "x"], id="cap"
        ),
    ],
)
def test_merge_push_tokens(stored, new, expected):
    assert merge_push_tokens(stored, new) == expected


@dataclass(frozen=True)
class _Audience:
    audience_id: int
    audience_name: str
    action: str


@dataclass(frozen=True)
class _Profile:
    user_identities: tuple[Identity, ...]
    audiences: tuple[_Audience, ...]
    device_identities: tuple[Identity, ...] = ()
    mpid: str | None = None


def test_any_value_with_the_profile_shape_can_be_planned():
    """The core is typed by Protocols, not by the Firehose message classes."""
    profile = _Profile(
        user_identities=(Identity(type="customer", value="c1", encoding="raw"),),
        audiences=(_Audience(5, "Five", "add"), _Audience(6, "Six", "delete")),
    )
    plan = plan_membership_changes(settings(), [profile])
    assert plan.memberships == {("c1", 5): True, ("c1", 6): False}
    assert plan.audience_names == {5: "Five", 6: "Six"}


def _plan_of(n_users: int, audiences_per_user: int = 2, unresolved: int = 0):
    from collections import Counter

    from audience_sync.core.membership import MembershipPlan, UserUpdate

    users = {f"u{i}": UserUpdate(external_id=f"u{i}", email=f"{i}@x.io") for i in range(n_users)}
    return MembershipPlan(
        users=users,
        memberships={(e, a): a % 2 == 0 for e in users for a in range(audiences_per_user)},
        audience_names={a: f"A{a}" for a in range(audiences_per_user)},
        unresolved=Counter({"no_external_id": unresolved} if unresolved else {}),
    )


@pytest.mark.parametrize(
    ("n_users", "per_part", "sizes"),
    [
        (0, 100, [0]),
        (1, 100, [1]),
        (100, 100, [100]),
        (101, 100, [100, 1]),
        (250, 100, [100, 100, 50]),
        (500, 100, [100] * 5),
        (7, 3, [3, 3, 1]),
    ],
)
def test_a_plan_splits_into_parts_that_together_are_the_plan(n_users, per_part, sizes):
    from audience_sync.core.membership import split_plan

    plan = _plan_of(n_users, unresolved=4)
    parts = split_plan(plan, per_part)
    assert [len(p.users) for p in parts] == sizes
    merged_users: dict = {}
    merged_memberships: dict = {}
    for part in parts:
        assert not set(part.users) & set(merged_users)  # every user in one part only
        assert {e for e, _ in part.memberships} <= set(part.users)
        assert part.audience_names == plan.audience_names
        merged_users.update(part.users)
        merged_memberships.update(part.memberships)
    assert merged_users == plan.users
    assert merged_memberships == plan.memberships
    assert [sum(p.unresolved.values()) for p in parts] == [0] * (len(parts) - 1) + [4]


@pytest.mark.parametrize(
    ("stored", "batches"),
    [
        ([], [["a"], ["b"], ["a"]]),
        (["s1", "s2"], [["a", "s1"], ["b"]]),
        ([f"s{n}" for n in range(10)], [[f"n{n}" for n in range(7)], ["s0", "n1", "x"]]),
    ],
)
def test_push_tokens_merged_in_turn_equal_the_merge_of_the_merged(stored, batches):
    """merge_plans folds a round's tokens first; the store merges that into the stored ones."""
    one_by_one = stored
    folded: list[str] = []
    for batch in batches:
        one_by_one = merge_push_tokens(one_by_one, batch)
        folded = merge_push_tokens(folded, batch)
    assert merge_push_tokens(stored, folded) == one_by_one


def test_merged_plans_keep_the_newest_change_the_later_on_a_tie_and_the_last_values():
    from collections import Counter

    from audience_sync.core.membership import MembershipPlan, UserUpdate, merge_plans

    def plan(memberships, **user):
        return MembershipPlan(
            users={"u": UserUpdate(external_id="u", **user)},
            memberships={("u", a): m for a, m in memberships.items()},
            audience_names={a: f"name at {len(memberships)}" for a in memberships},
            unresolved=Counter({"no_external_id": 1}),
        )

    merged = merge_plans(
        [
            (10.0, plan({1: True, 2: True}, email="a", push_tokens=["t1"])),
            (10.0, plan({1: False}, mpid="m", push_tokens=["t2"])),  # tie: the later wins
            (5.0, plan({2: False}, email="b", push_tokens=["t1"])),  # older: loses audience 2
        ]
    )
    assert merged.memberships == {("u", 1): (False, 10.0), ("u", 2): (True, 10.0)}
    user = merged.users["u"]
    assert (user.email, user.mpid, user.push_tokens) == ("b", "m", ["t2", "t1"])
    assert merged.audience_names == {1: "name at 2", 2: "name at 2"}  # the first seen
    assert merged.unresolved == Counter({"no_external_id": 3})
