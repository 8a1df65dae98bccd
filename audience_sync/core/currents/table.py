"""The table of exported Currents event types and what each becomes in mParticle (SPEC §6.3).

The default table is package data (``mparticle_map.json``, copied from the mapping of the 77
types Braze's own connector exports); ``currents.mapping_path`` may name a JSON file of the same
shape whose entries replace or add types (``null`` removes one). Reading the bundled file is the
one read here: it is part of the package, not of the outside world.
"""

from __future__ import annotations

import json
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType

CUSTOM_EVENT = "custom_event"
UNINSTALL = "uninstall"
MP_EVENT_TYPES = (CUSTOM_EVENT, UNINSTALL)


class MappingTableError(ValueError):
    """A mapping table (or an override) that cannot be used; the message names the entry."""


@dataclass(frozen=True, kw_only=True)
class TypeMapping:
    """What one Currents event type becomes.

    Attributes:
        currents_type: e.g. ``users.messages.email.Open``.
        mp_event_type: ``custom_event`` or ``uninstall``.
        event_name: the plural display name (``Email Opens``); None for ``uninstall``.
        custom_event_type: ``other`` for custom events, None for ``uninstall``.
        custom_attributes: the keys Braze's connector prints (documentation of the shape; all
            other fields are forwarded too, SPEC §6.3).
        device_info: mParticle ``device_info`` keys this type carries.
        user_identities: identity keys (``customerid``, ``email``).
        user_attributes: user attribute keys (``$mobile`` on SMS/RCS/WhatsApp).
    """

    currents_type: str
    mp_event_type: str
    event_name: str | None
    custom_event_type: str | None
    custom_attributes: tuple[str, ...] = ()
    device_info: tuple[str, ...] = ()
    user_identities: tuple[str, ...] = ()
    user_attributes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MappingTable:
    """Exported types by Currents type; a type absent here is ``not_exported``."""

    entries: Mapping[str, TypeMapping]

    def get(self, currents_type: str) -> TypeMapping | None:
        """The mapping of ``currents_type``, or None when it is not exported."""
        return self.entries.get(currents_type)

    def __len__(self) -> int:
        return len(self.entries)


def _keys(raw: Mapping[str, t.Any], name: str, where: str) -> tuple[str, ...]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MappingTableError(f"{where}.{name}: must be a list of strings")
    return tuple(value)


def parse_entry(currents_type: str, raw: object) -> TypeMapping:
    """Validate one table entry (the JSON shape of ``mparticle_map.json``)."""
    where = f"mapping[{currents_type!r}]"
    if not isinstance(raw, Mapping):
        raise MappingTableError(f"{where}: must be an object")
    mp_type = raw.get("event_type", CUSTOM_EVENT)
    if mp_type not in MP_EVENT_TYPES:
        raise MappingTableError(f"{where}.event_type: must be one of {', '.join(MP_EVENT_TYPES)}")
    name = raw.get("event_name")
    if mp_type == CUSTOM_EVENT and (not isinstance(name, str) or not name.strip()):
        raise MappingTableError(f"{where}.event_name: required for a custom_event")
    custom_event_type = raw.get("custom_event_type", "other" if mp_type == CUSTOM_EVENT else None)
    return TypeMapping(
        currents_type=currents_type,
        mp_event_type=mp_type,
        event_name=name if mp_type == CUSTOM_EVENT else None,
        custom_event_type=custom_event_type if mp_type == CUSTOM_EVENT else None,
        custom_attributes=_keys(raw, "custom_attributes", where),
        device_info=_keys(raw, "device_info", where),
        user_identities=_keys(raw, "user_identities", where),
        user_attributes=_keys(raw, "user_attributes", where),
    )


def parse_table(raw: Mapping[str, object]) -> MappingTable:
    """Build a table from its JSON shape ``{currents_type: entry}``."""
    return MappingTable(entries=MappingProxyType({k: parse_entry(k, v) for k, v in raw.items()}))


def override_table(base: MappingTable, overrides: Mapping[str, object]) -> MappingTable:
    """``base`` with entries replaced or added by ``overrides``; an entry ``None`` removes a type.

    An override entry may give only some fields (``{"event_name": "Opens"}``): the rest come from
    the base entry when there is one.
    """
    entries = dict(base.entries)
    for currents_type, raw in overrides.items():
        if raw is None:
            entries.pop(currents_type, None)
            continue
        if not isinstance(raw, Mapping):
            raise MappingTableError(f"mapping[{currents_type!r}]: must be an object or null")
        current = entries.get(currents_type)
        merged: dict[str, object] = {}
        if current is not None:
            merged = {
                "event_type": current.mp_event_type,
                "event_name": current.event_name,
                "custom_event_type": current.custom_event_type,
                "custom_attributes": list(current.custom_attributes),
                "device_info": list(current.device_info),
                "user_identities": list(current.user_identities),
                "user_attributes": list(current.user_attributes),
            }
        merged.update(raw)
        if merged.get("custom_event_type") is None and merged.get("event_type") != UNINSTALL:
            merged.pop("custom_event_type", None)
        entries[currents_type] = parse_entry(currents_type, merged)
    return MappingTable(entries=MappingProxyType(entries))


@cache
def default_table() -> MappingTable:
    """The bundled table of the 77 exported types."""
    text = resources.files(__package__).joinpath("mparticle_map.json").read_text("utf-8")
    return parse_table(json.loads(text))
