"""Compare what Braze acknowledged with what it actually holds → drift, and the repair (SPEC §7).
Pure: no I/O, no clock.

The repair never writes anything itself: it is the acknowledged map to store instead, equal to
what Braze holds for every attribute the engine manages. The user is then marked dirty, and the
normal sender's ``desired - acknowledged`` (:func:`~audience_sync.core.attributes.diff`) writes
exactly the differences, at the minimal data-point cost.

Managed keys are those the engine writes for the user: every acknowledged key, and every key
its desired state names (so a stray ``SegmentMembership`` or a missing ``In <name>`` is seen).
Attributes of other tools are never looked at.
"""

from __future__ import annotations

import typing as t
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from audience_sync.core.attributes import (
    ARRAY_ATTRIBUTE,
    EMAIL_KEY,
    PUSH_TOKENS_KEY,
    STRING_ATTRIBUTE,
)


class DriftKind(StrEnum):
    """How Braze differs from the acknowledged state."""

    MISSING_IN_BRAZE = "missing_in_braze"  # Braze does not know the user at all
    VALUE_MISSING = "value_missing"  # an acknowledged attribute is gone
    VALUE_CHANGED = "value_changed"  # another value (a flipped boolean, an edited string)
    UNEXPECTED_VALUE = "unexpected_value"  # a managed attribute the engine never acknowledged
    ARRAY_EXTRA = "array_extra"  # stray values in SegmentMembershipArray
    ARRAY_MISSING = "array_missing"  # acknowledged values gone from SegmentMembershipArray


@dataclass(frozen=True, kw_only=True)
class Observed:
    """What the export returned for one user."""

    custom_attributes: Mapping[str, t.Any] = field(default_factory=dict)
    email: str | None = None


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One difference, on one attribute, with the audiences it concerns (may be empty)."""

    kind: DriftKind
    key: str
    audience_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class UserAudit:
    """The findings for one user and, when there are any, the acknowledged map to store."""

    external_id: str
    findings: tuple[Finding, ...] = ()
    repaired: Mapping[str, t.Any] | None = None

    @property
    def drifted(self) -> bool:
        """Whether Braze differs from the acknowledged state."""
        return bool(self.findings)


def _same(a: t.Any, b: t.Any) -> bool:
    # True == 1 in Python; Braze keeps them apart.
    return type(a) is type(b) and a == b


def parse_membership_string(value: t.Any) -> set[int]:
    """Audience ids of ``'11034','11036'`` (unparsable parts are ignored)."""
    if not isinstance(value, str):
        return set()
    ids = set()
    for part in value.split(","):
        part = part.strip().strip("'")
        if part.isdigit():
            ids.add(int(part))
    return ids


def _ids(values: Collection[t.Any]) -> tuple[int, ...]:
    return tuple(sorted(int(v) for v in values if str(v).isdigit()))


def _array(value: t.Any) -> set[str] | None:
    """An array attribute as a set of strings; None when absent (Braze keeps ``[]`` after
    the last value is removed: the same as absent for every segment filter)."""
    if value is None:
        return None
    if isinstance(value, list):
        return {str(v) for v in value} or None
    return {repr(value)}  # not an array at all: differs from any acknowledged array


def audit_user(
    external_id: str,
    *,
    acknowledged: Mapping[str, t.Any],
    actual: Observed | None,
    managed_keys: Collection[str],
    audience_of_key: Mapping[str, int] | None = None,
) -> UserAudit:
    """Compare one user.

    Args:
        acknowledged: what the engine believes Braze holds.
        actual: the export's record, or None when Braze does not know the user.
        managed_keys: attribute keys the engine writes for this user (besides the
            acknowledged ones).
        audience_of_key: ``In <name>`` key → audience id, to report drift per audience.
    """
    audience_of_key = audience_of_key or {}
    known = [k for k in acknowledged if k != PUSH_TOKENS_KEY]
    if actual is None:
        if not acknowledged:
            return UserAudit(external_id=external_id)  # never written: nothing to miss
        audiences: set[int] = set()
        audiences |= parse_membership_string(acknowledged.get(STRING_ATTRIBUTE))
        audiences |= set(_ids(acknowledged.get(ARRAY_ATTRIBUTE) or ()))
        audiences |= {audience_of_key[k] for k in known if k in audience_of_key and acknowledged[k]}
        finding = Finding(
            kind=DriftKind.MISSING_IN_BRAZE, key="", audience_ids=tuple(sorted(audiences))
        )
        # Braze holds nothing: everything, push tokens too, is to be written again.
        return UserAudit(external_id=external_id, findings=(finding,), repaired={})

    held = dict(actual.custom_attributes)
    if actual.email is not None:
        held[EMAIL_KEY] = actual.email
    findings: list[Finding] = []
    repaired = dict(acknowledged)
    keys = (set(known) | set(managed_keys)) - {PUSH_TOKENS_KEY}
    for key in sorted(keys):
        want, have = acknowledged.get(key), held.get(key)
        if key == ARRAY_ATTRIBUTE:
            acked, actual_values = _array(want), _array(have)
            if acked == actual_values:
                continue
            extra = (actual_values or set()) - (acked or set())
            lost = (acked or set()) - (actual_values or set())
            if extra:
                findings.append(
                    Finding(kind=DriftKind.ARRAY_EXTRA, key=key, audience_ids=_ids(extra))
                )
            if lost:
                findings.append(
                    Finding(kind=DriftKind.ARRAY_MISSING, key=key, audience_ids=_ids(lost))
                )
            if have is None:
                repaired.pop(key, None)
            else:
                repaired[key] = list(have) if isinstance(have, list) else have
            continue
        if key == EMAIL_KEY and isinstance(want, str) and isinstance(have, str):
            if want.strip().lower() == have.strip().lower():
                continue  # Braze may normalise case: not a difference worth a data point
        if _same(want, have) or (want is None and have is None):
            continue
        if key == STRING_ATTRIBUTE:
            audiences_ = _ids(
                {str(a) for a in parse_membership_string(want) ^ parse_membership_string(have)}
            )
        else:
            audience = audience_of_key.get(key)
            audiences_ = (audience,) if audience is not None else ()
        if have is None:
            kind = DriftKind.VALUE_MISSING
            repaired.pop(key, None)
        else:
            kind = DriftKind.VALUE_CHANGED if want is not None else DriftKind.UNEXPECTED_VALUE
            repaired[key] = have
        findings.append(Finding(kind=kind, key=key, audience_ids=audiences_))
    if not findings:
        return UserAudit(external_id=external_id)
    return UserAudit(external_id=external_id, findings=tuple(findings), repaired=repaired)
