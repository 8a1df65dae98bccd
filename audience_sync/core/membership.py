"""What a membership-change request asks for, per Braze-facing user (pure, no I/O).

Profiles are resolved to users with :func:`audience_sync.core.identity.resolve_user`; several
profiles of one request may be the same user, and later entries win (SPEC §3.2, §4.1).

The profiles are typed by the Protocols below, which the Firehose message values
(:mod:`audience_sync.firehose.messages`) satisfy: the core plans without knowing the protocol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from audience_sync.core.connection import ConnectionSettings
from audience_sync.core.identity import Identity, ResolvedUser, resolve_user

MAX_PUSH_TOKENS = 10
"""Push tokens kept per user: the newest ones."""

IS_MEMBER_BY_ACTION = {"add": True, "delete": False}
"""``attribute_update`` changes no membership."""


class AudienceChange(Protocol):
    """One audience entry of a profile: which audience, and ``add``/``delete``/other."""

    @property
    def audience_id(self) -> int: ...
    @property
    def audience_name(self) -> str: ...
    @property
    def action(self) -> str: ...


class UserProfile(Protocol):
    """One profile of a membership-change request."""

    @property
    def user_identities(self) -> Sequence[Identity]: ...
    @property
    def device_identities(self) -> Sequence[Identity]: ...
    @property
    def mpid(self) -> str | None: ...
    @property
    def audiences(self) -> Sequence[AudienceChange]: ...


@dataclass(kw_only=True)
class UserUpdate:
    """What the request says about one user: email and mpid if given, new push tokens."""

    external_id: str
    email: str | None = None
    mpid: str | None = None
    push_tokens: list[str] = field(default_factory=list)

    def absorb(self, email: str | None, mpid: str | None, push_tokens: Sequence[str]) -> None:
        """A later statement about the user: a given email or mpid replaces the earlier one;
        push tokens are merged (newest kept)."""
        if email is not None:
            self.email = email
        if mpid is not None:
            self.mpid = mpid
        if push_tokens:
            self.push_tokens = merge_push_tokens(self.push_tokens, push_tokens)


@dataclass(frozen=True, kw_only=True)
class MembershipPlan:
    """Users to upsert, membership states to set, audiences seen, unresolved profiles."""

    users: dict[str, UserUpdate]
    # (external_id, audience_id) -> is_member, later entries of the request winning.
    memberships: dict[tuple[str, int], bool]
    # audience_id -> the first name sent for it in this request.
    audience_names: dict[int, str]
    unresolved: Counter[str]


def merge_push_tokens(stored: Iterable[str], new: Iterable[str]) -> list[str]:
    """Stored tokens then new ones, deduplicated (a re-sent token becomes newest), newest 10."""
    merged = dict.fromkeys(stored)
    for token in new:
        merged.pop(token, None)
        merged[token] = None
    return list(merged)[-MAX_PUSH_TOKENS:]


def plan_membership_changes(
    settings: ConnectionSettings, profiles: Iterable[UserProfile]
) -> MembershipPlan:
    """Resolve each profile and fold the request into one update per user."""
    users: dict[str, UserUpdate] = {}
    memberships: dict[tuple[str, int], bool] = {}
    audience_names: dict[int, str] = {}
    unresolved: Counter[str] = Counter()
    for profile in profiles:
        for audience in profile.audiences:
            audience_names.setdefault(audience.audience_id, audience.audience_name)
        resolved = resolve_user(
            settings,
            user_identities=profile.user_identities,
            device_identities=profile.device_identities,
            mpid=profile.mpid,
        )
        if not isinstance(resolved, ResolvedUser):
            unresolved[resolved.reason] += 1
            continue
        external_id = resolved.external_id
        update = users.get(external_id)
        if update is None:
            update = users[external_id] = UserUpdate(external_id=external_id)
        update.absorb(resolved.email, resolved.mpid, resolved.push_tokens)
        for audience in profile.audiences:
            is_member = IS_MEMBER_BY_ACTION.get(audience.action)
            if is_member is not None:
                memberships[external_id, audience.audience_id] = is_member
    return MembershipPlan(
        users=users,
        memberships=memberships,
        audience_names=audience_names,
        unresolved=unresolved,
    )


def split_plan(plan: MembershipPlan, users_per_part: int) -> list[MembershipPlan]:
    """The plan in parts of at most ``users_per_part`` users, each with those users'
    memberships and every audience name; the unresolved counts go with the last part. Applied
    in order, the parts have the plan's effect (upserts of disjoint users), in shorter
    transactions. Always at least one part."""
    external_ids = list(plan.users)
    if len(external_ids) <= users_per_part:
        return [plan]
    by_user: dict[str, dict[tuple[str, int], bool]] = {}
    for key, is_member in plan.memberships.items():
        by_user.setdefault(key[0], {})[key] = is_member
    parts = []
    for start in range(0, len(external_ids), users_per_part):
        chunk = external_ids[start : start + users_per_part]
        memberships: dict[tuple[str, int], bool] = {}
        for external_id in chunk:
            memberships.update(by_user.pop(external_id, {}))
        parts.append(
            MembershipPlan(
                users={e: plan.users[e] for e in chunk},
                memberships=memberships,
                audience_names=plan.audience_names,
                unresolved=Counter(),
            )
        )
    last = parts[-1]
    for rest in by_user.values():  # memberships of no listed user: kept, never dropped
        last.memberships.update(rest)
    parts[-1] = MembershipPlan(
        users=last.users,
        memberships=last.memberships,
        audience_names=last.audience_names,
        unresolved=Counter(plan.unresolved),
    )
    return parts


@dataclass(frozen=True, kw_only=True)
class MergedPlans:
    """Several plans of one account folded into one write, with the effect of applying them
    one after the other (:func:`merge_plans`)."""

    users: dict[str, UserUpdate]
    # (external_id, audience_id) -> (is_member, changed_at): the newest change of each.
    memberships: dict[tuple[str, int], tuple[bool, float]]
    audience_names: dict[int, str]
    unresolved: Counter[str]


def merge_plans(plans: Sequence[tuple[float, MembershipPlan]]) -> MergedPlans:
    """Fold ``(changed_at, plan)`` pairs, in arrival order, into what applying them in that
    order would leave: a user's email and mpid are the last ones given; push tokens merge in
    order (``merge_push_tokens`` folds associatively, so merging the result into the stored
    tokens equals merging each plan's in turn); a membership takes the change with the newest
    ``changed_at``, the later plan on a tie (an upsert overwrites a row not newer than it); an
    audience keeps the first name seen (the first plan inserts it)."""
    users: dict[str, UserUpdate] = {}
    memberships: dict[tuple[str, int], tuple[bool, float]] = {}
    audience_names: dict[int, str] = {}
    unresolved: Counter[str] = Counter()
    for changed_at, plan in plans:
        for external_id, update in plan.users.items():
            merged = users.get(external_id)
            if merged is None:
                users[external_id] = UserUpdate(
                    external_id=external_id,
                    email=update.email,
                    mpid=update.mpid,
                    push_tokens=list(update.push_tokens),
                )
                continue
            merged.absorb(update.email, update.mpid, update.push_tokens)
        for key, is_member in plan.memberships.items():
            held = memberships.get(key)
            if held is None or held[1] <= changed_at:
                memberships[key] = (is_member, changed_at)
        for audience_id, name in plan.audience_names.items():
            audience_names.setdefault(audience_id, name)
        unresolved.update(plan.unresolved)
    return MergedPlans(
        users=users, memberships=memberships, audience_names=audience_names, unresolved=unresolved
    )
