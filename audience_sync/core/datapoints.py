"""Braze data points a ``/users/track`` attributes object costs (SPEC §4.5). Pure.

Braze's published rules: every custom attribute key written costs 1 (``null`` too); an array
``add``/``remove`` costs 1 per value; a whole-array set costs 1; ``email`` 1; push tokens 0.
Identifiers and request flags cost nothing.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

FREE_KEYS = frozenset(
    {"external_id", "user_alias", "braze_id", "_update_existing_only", "push_tokens"}
)


def datapoints_of(obj: Mapping[str, t.Any]) -> int:
    """The data points one attributes object costs."""
    points = 0
    for key, value in obj.items():
        if key in FREE_KEYS:
            continue
        if isinstance(value, Mapping) and ("add" in value or "remove" in value):
            points += len(value.get("add") or ()) + len(value.get("remove") or ())
        else:
            points += 1
    return points
