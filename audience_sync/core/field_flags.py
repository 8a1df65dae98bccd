"""Field values Braze refused for one user, kept from being sent again (pure, SPEC §5.3).

When Braze refuses one field of a user's object (a malformed email, a bad push token, an
attribute value it will not take), the rest of the object is fine, but resending it unchanged
can never succeed. So the refused value is remembered as a :class:`FieldFlag` (the value's
fingerprint, per user and field), the user is sent again at once, and every write computed for
it leaves out a field whose value has that fingerprint: the membership attributes land, the
field is flagged on the user (``invalid_email``, ``invalid_push_token``...), and the value is
not sent again until it changes. Fingerprints compare the value as it is sent (for push tokens:
the new tokens), never the value itself, which is not stored twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audience_sync.core.attributes import KEEP, DesiredAttributes

FINGERPRINT_CHARS = 32
"""Hex digits kept of the sha256 of a refused value."""


@dataclass(frozen=True, kw_only=True)
class FieldFlag:
    """One field value Braze refused for one user.

    Attributes:
        field: the attribute name (``email``, ``push_tokens``, ``In Ibiza Dreamers``...).
        fingerprint: :func:`fingerprint` of the value sent for it.
        flag: what it shows on the user while the value is withheld (``invalid_email``...).
    """

    field: str
    fingerprint: str
    flag: str


def fingerprint(value: t.Any) -> str:
    """A stable digest of a JSON value (key order does not matter)."""
    canonical = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


def flags_of_refusal(
    sent: Mapping[str, t.Any], refused: Mapping[str, str]
) -> tuple[FieldFlag, ...] | None:
    """What to remember when Braze refused the fields of ``refused`` in the object ``sent``.

    Args:
        sent: the attributes object sent for the user.
        refused: refused field -> the flag it puts on the user.

    Returns:
        One flag per refused field, or ``None`` when a refused field is not in ``sent``: then
        leaving it out cannot change Braze's answer, and the object is retried as any failure.
    """
    if not refused or any(name not in sent for name in refused):
        return None
    return tuple(
        FieldFlag(field=name, fingerprint=fingerprint(sent[name]), flag=flag)
        for name, flag in sorted(refused.items())
    )


def withheld(attributes: Mapping[str, t.Any], flags: Sequence[FieldFlag]) -> tuple[FieldFlag, ...]:
    """The flags whose field a computed write would send with the same refused value."""
    return tuple(
        f
        for f in flags
        if f.field in attributes and fingerprint(attributes[f.field]) == f.fingerprint
    )


def withhold(desired: DesiredAttributes, flags: Sequence[FieldFlag]) -> DesiredAttributes:
    """``desired`` with the flagged fields left as Braze holds them (not written)."""
    attributes = dict(desired.attributes)
    for f in flags:
        attributes[f.field] = KEEP
    return dataclasses.replace(desired, attributes=attributes)
