"""Membership state -> Braze attributes, and the minimal write (SPEC §4.1, §4.3 to §4.6). Pure.

Two steps, both without I/O:

1. :func:`desired_attributes` merges what every connection sharing a Braze workspace wants for
   one user into one attribute map (the union of §4.6), applying the guards of §4.4.
2. :func:`diff` compares it with the *acknowledged* map (what Braze confirmed) and returns the
   ``/users/track`` object that changes exactly the differences, the acknowledged map to store
   once Braze accepts it, and the data points it costs (§4.5).

Acknowledged maps only ever hold keys this engine wrote, so a key that is acknowledged but no
longer desired (a renamed audience, a part no longer selected, a cleaned-up audience) is cleared
with ``null``. Push tokens live under :data:`PUSH_TOKENS_KEY` as ``[[app_id, token], ...]``.
"""

from __future__ import annotations

import typing as t
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from audience_sync.core.connection import PART_ARRAY, PART_PER_SEGMENT, PART_STRING

STRING_ATTRIBUTE = "SegmentMembership"
ARRAY_ATTRIBUTE = "SegmentMembershipArray"
PER_SEGMENT_PREFIX = "In "
EMAIL_KEY = "email"
PUSH_TOKENS_KEY = "push_tokens"
UPDATE_EXISTING_ONLY_KEY = "_update_existing_only"

MAX_STRING_LENGTH = 255
"""Braze truncates string values longer than this (SPEC §4.4)."""
MAX_ATTRIBUTE_NAME_LENGTH = 255
"""Braze truncates attribute names longer than this (SPEC §4.4)."""

FLAG_STRING_TOO_LONG = "string_too_long"
FLAG_ARRAY_TOO_LONG = "array_too_long"
FLAG_ATTRIBUTE_NAME_TOO_LONG = "attribute_name_too_long"

ARRAY_WRITE_DELTA = "delta"
ARRAY_WRITE_FULL = "full"


class _Keep:
    """Desired value meaning "leave whatever Braze holds": a guard stopped the write."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: t.Final = _Keep()

# (account_id, audience_id) a data point is charged to; 0 where it is not attributable.
Charge = tuple[int, int]
UNATTRIBUTED: Charge = (0, 0)


@dataclass(frozen=True, kw_only=True)
class Membership:
    """One audience a user is or was in, for one connection."""

    audience_id: int
    name: str
    is_member: bool


@dataclass(frozen=True, kw_only=True)
class Contribution:
    """What one connection wants for one Braze user.

    ``memberships`` excludes audiences removed with cleanup: their attributes are to go.
    """

    account_id: int
    parts: frozenset[str]
    memberships: Sequence[Membership] = ()
    api_key: str = ""
    email: str | None = None
    email_updated_at: float = 0.0
    push_tokens: Sequence[str] = ()
    update_existing_only: bool = False


@dataclass(frozen=True, kw_only=True)
class DesiredAttributes:
    """The attributes one Braze user should hold, with why some could not be written."""

    attributes: Mapping[str, t.Any]
    flags: frozenset[str] = frozenset()
    charges: Mapping[str, Charge] = field(default_factory=dict)
    update_existing_only: bool = False


# Built per user on the sender's hot path: a plain slotted dataclass, three times cheaper to
# build than a frozen one. Read only by convention, like every value of the plan.
@dataclass(kw_only=True, slots=True)
class Write:
    """The minimal ``/users/track`` attributes object for one user and its consequences."""

    external_id: str
    attributes: Mapping[str, t.Any]
    acknowledged: Mapping[str, t.Any]
    datapoints: int
    charges: Mapping[Charge, int]

    @property
    def is_empty(self) -> bool:
        """Nothing to send: desired already equals acknowledged."""
        attributes = self.attributes
        # Counted, not scanned: asked of every planned user.
        return len(attributes) == ("external_id" in attributes) + (
            UPDATE_EXISTING_ONLY_KEY in attributes
        )


def per_segment_attribute(audience_name: str) -> str:
    """``In <name>``, the name trimmed as Braze trims it."""
    return PER_SEGMENT_PREFIX + audience_name.strip()


def segment_membership_string(audience_ids: Sequence[int] | set[int]) -> str:
    """``'11034','11036'``: quoted ids, ascending numeric order, comma-joined."""
    return ",".join(f"'{a}'" for a in sorted(audience_ids))


def desired_attributes(
    contributions: Sequence[Contribution], *, array_max_length: int
) -> DesiredAttributes:
    """Merge every connection's wishes for one Braze user into one attribute map."""
    attributes: dict[str, t.Any] = {}
    charges: dict[str, Charge] = {}
    flags: set[str] = set()

    string_ids: dict[int, int] = {}  # audience id -> account id
    array_ids: dict[int, int] = {}
    wants_string = wants_array = False
    for contribution in contributions:
        members = [m for m in contribution.memberships if m.is_member]
        if PART_STRING in contribution.parts:
            wants_string = True
            for m in members:
                string_ids.setdefault(m.audience_id, contribution.account_id)
        if PART_ARRAY in contribution.parts:
            wants_array = True
            for m in members:
                array_ids.setdefault(m.audience_id, contribution.account_id)
        if PART_PER_SEGMENT in contribution.parts:
            for m in contribution.memberships:
                key = per_segment_attribute(m.name)
                if len(key) > MAX_ATTRIBUTE_NAME_LENGTH:
                    flags.add(FLAG_ATTRIBUTE_NAME_TOO_LONG)
                    continue
                # Two audiences with one name: the user is "in" it if in either.
                attributes[key] = bool(attributes.get(key)) or m.is_member
                charges.setdefault(key, (contribution.account_id, m.audience_id))

    accounts = {c.account_id for c in contributions}
    single_account = next(iter(accounts)) if len(accounts) == 1 else 0
    if wants_string and string_ids:
        value = segment_membership_string(string_ids.keys())
        if len(value) > MAX_STRING_LENGTH:
            flags.add(FLAG_STRING_TOO_LONG)
            attributes[STRING_ATTRIBUTE] = KEEP
        else:
            attributes[STRING_ATTRIBUTE] = value
        charges[STRING_ATTRIBUTE] = (single_account, 0)
    if wants_array:
        if len(array_ids) > array_max_length:
            flags.add(FLAG_ARRAY_TOO_LONG)
            attributes[ARRAY_ATTRIBUTE] = KEEP
        else:
            # An empty list (part selected, no audiences) removes values one by one in delta
            # mode; an absent key (part no longer selected) clears the attribute with null.
            attributes[ARRAY_ATTRIBUTE] = [str(a) for a in sorted(array_ids)]
        charges[ARRAY_ATTRIBUTE] = (single_account, 0)

    email_source = max(
        (c for c in contributions if c.email),
        key=lambda c: c.email_updated_at,
        default=None,
    )
    # Email is written when it changes, never cleared: a profile without it says nothing.
    attributes[EMAIL_KEY] = email_source.email if email_source else KEEP

    tokens = sorted(
        {(c.api_key, token) for c in contributions if c.api_key for token in c.push_tokens}
    )
    if tokens:
        attributes[PUSH_TOKENS_KEY] = [list(pair) for pair in tokens]

    return DesiredAttributes(
        attributes=attributes,
        flags=frozenset(flags),
        charges=charges,
        update_existing_only=bool(contributions)
        and all(c.update_existing_only for c in contributions),
    )


def _same(a: t.Any, b: t.Any) -> bool:
    # True == 1 in Python; Braze treats them as different types.
    return type(a) is type(b) and a == b


def _array_charges(
    values: Sequence[str], desired: DesiredAttributes, audience_accounts: Mapping[int, int]
) -> Counter[Charge]:
    out: Counter[Charge] = Counter()
    for value in values:
        try:
            audience_id = int(value)
        except ValueError:
            out[UNATTRIBUTED] += 1
            continue
        out[
            (audience_accounts.get(audience_id, desired.charges[ARRAY_ATTRIBUTE][0]), audience_id)
        ] += 1
    return out


@dataclass(frozen=True, kw_only=True)
class Uncertain:
    """Attributes whose value in Braze is unknown: a write that touched them may or may not
    have been applied (5xx, dropped connection, timeout, or a crash between send and record).

    ``keys`` are attribute keys; ``values`` are array values added or removed. The next write
    resends them whatever the acknowledged state says, so an unconfirmed write can never leave
    Braze wrong once the desired state swings back to the acknowledged one.
    """

    keys: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.keys or self.values)

    def __or__(self, other: Uncertain) -> Uncertain:
        return Uncertain(keys=self.keys | other.keys, values=self.values | other.values)

    def to_json(self) -> dict[str, list[str]] | None:
        """Storable form (None when nothing is uncertain)."""
        if not self:
            return None
        return {"keys": sorted(self.keys), "values": sorted(self.values)}

    @classmethod
    def from_json(cls, data: Mapping[str, Sequence[str]] | None) -> Uncertain:
        """Inverse of :meth:`to_json`."""
        if not data:
            return NOTHING_UNCERTAIN
        return cls(keys=frozenset(data.get("keys", ())), values=frozenset(data.get("values", ())))


NOTHING_UNCERTAIN: t.Final = Uncertain()


def touched(write: Write) -> Uncertain:
    """What a write changes in Braze: uncertain until Braze confirms it."""
    keys = {k for k in write.attributes if k not in ("external_id", UPDATE_EXISTING_ONLY_KEY)}
    values: set[str] = set()
    array = write.attributes.get(ARRAY_ATTRIBUTE)
    if isinstance(array, Mapping):
        values.update(array.get("add", ()))
        values.update(array.get("remove", ()))
    return Uncertain(keys=frozenset(keys), values=frozenset(values))


def diff(
    external_id: str,
    desired: DesiredAttributes,
    acknowledged: Mapping[str, t.Any],
    *,
    array_write: str = ARRAY_WRITE_DELTA,
    audience_accounts: Mapping[int, int] | None = None,
    uncertain: Uncertain = NOTHING_UNCERTAIN,
) -> Write:
    """The minimal write that turns ``acknowledged`` into ``desired`` (SPEC §4.1, §4.5).

    Args:
        external_id: the Braze user.
        desired: from :func:`desired_attributes`.
        acknowledged: what Braze confirmed so far (keys this engine wrote).
        array_write: ``delta`` sends ``{"add", "remove"}``; ``full`` the whole array.
        audience_accounts: audience id -> account id, to charge array values to a connection.
        uncertain: keys and array values an unconfirmed earlier write may have changed; they
            are written again whatever ``acknowledged`` says.

    Returns:
        The write; ``Write.is_empty`` when nothing needs sending. Its ``acknowledged`` is the
        state once Braze accepts it; uncertain keys it could not write (a guard holds them
        back) are dropped from it, so they are written once the guard allows.
    """
    audience_accounts = audience_accounts or {}
    obj: dict[str, t.Any] = {"external_id": external_id}
    new_ack: dict[str, t.Any] = dict(acknowledged)
    charges: Counter[Charge] = Counter()

    def charge(key: str, points: int = 1) -> None:
        charges[desired.charges.get(key, UNATTRIBUTED)] += points

    for key in sorted(set(desired.attributes) | set(acknowledged) | uncertain.keys):
        want = desired.attributes.get(key, None)
        have = acknowledged.get(key, None)
        unsure = key in uncertain.keys
        if want is KEEP:
            if unsure:
                new_ack.pop(key, None)
            continue
        if key == PUSH_TOKENS_KEY:
            held = {tuple(p) for p in (have or [])}
            new = [p for p in (want or []) if tuple(p) not in held]
            if new:  # tokens are added, never removed, and cost no data points
                obj[PUSH_TOKENS_KEY] = [{"app_id": app, "token": tok} for app, tok in new]
                new_ack[PUSH_TOKENS_KEY] = sorted([list(p) for p in held] + new)
            continue
        if key == EMAIL_KEY:
            if want is not None and (unsure or not _same(want, have)):
                obj[EMAIL_KEY] = want
                new_ack[EMAIL_KEY] = want
                charge(key)
            elif unsure:
                new_ack.pop(key, None)
            continue
        if key == ARRAY_ATTRIBUTE and want is not None:
            held_values = list(have) if isinstance(have, list) else []
            if array_write == ARRAY_WRITE_FULL:
                if set(want) == set(held_values) and have is not None and not unsure:
                    continue
                if not want and have is None and not unsure:
                    continue
                obj[key] = want if want else None
                if want:
                    new_ack[key] = list(want)
                else:
                    new_ack.pop(key, None)
                charge(key)
                continue
            held_set = set(held_values)
            want_set = set(want)
            # An uncertain value is added if wanted, removed if not; an uncertain key (an
            # unconfirmed whole-array or null write) makes every held or wanted value uncertain.
            doubtful = set(uncertain.values) | (held_set | want_set if unsure else set())
            add = sorted((want_set - held_set) | (doubtful & want_set), key=_id_order)
            remove = sorted((held_set - want_set) | (doubtful - want_set), key=_id_order)
            if not add and not remove:
                continue
            obj[key] = {**({"add": add} if add else {}), **({"remove": remove} if remove else {})}
            # Braze keeps an empty array after the last value is removed.
            new_ack[key] = sorted(want_set, key=_id_order)
            charges.update(_array_charges(add + remove, desired, audience_accounts))
            continue
        if want is False and have is None and not unsure and key.startswith(PER_SEGMENT_PREFIX):
            # Never written as true: "not in" is already what Braze shows (no-op churn is free).
            continue
        if want is None:
            if have is None and not unsure:
                continue
            # Acknowledged (or maybe written) but no longer desired: clear it (1 data point).
            obj[key] = None
            new_ack.pop(key, None)
            charge(key)
            continue
        if unsure or not _same(want, have):
            obj[key] = want
            new_ack[key] = want
            charge(key)

    if desired.update_existing_only and len(obj) > 1:
        obj[UPDATE_EXISTING_ONLY_KEY] = True
    return Write(
        external_id=external_id,
        attributes=obj,
        acknowledged=new_ack,
        datapoints=sum(charges.values()),
        charges=dict(charges),
    )


def _id_order(value: str) -> tuple[int, int | str]:
    """Audience ids sort numerically; anything else after them, as text."""
    try:
        return (0, int(value))
    except ValueError:
        return (1, value)
