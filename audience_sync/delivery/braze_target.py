"""Where a workspace's requests go: the effective settings of its active connections (parsed
once per settings fingerprint) and the endpoint and key they name."""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from audience_sync.braze.keys import fingerprint
from audience_sync.core.connection import ConnectionSettings, effective_settings
from audience_sync.core.state import Snapshot
from audience_sync.core.states import ConnectionState


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where a workspace's requests go."""

    workspace_id: int
    endpoint: str
    api_key: str

    @property
    def key_id(self) -> str:
        """The rate-budget key: a fingerprint, so the key itself never sits in memory twice."""
        return fingerprint(self.api_key)


class ActiveConnections:
    """The deliverable connections of a workspace, from a snapshot; a process-lifetime cache of
    parsed settings keyed by ``(account_id, settings fingerprint)``."""

    def __init__(
        self,
        overrides: Callable[[int], Mapping[str, str]],
        allowed_custom_endpoints: tuple[str, ...],
    ) -> None:
        self.overrides = overrides
        self.allowed_custom_endpoints = allowed_custom_endpoints
        self._parsed: dict[tuple[int, str], ConnectionSettings] = {}

    def settings_of(self, account_id: int, raw: Mapping[str, t.Any], fp: str) -> ConnectionSettings:
        """The effective settings of a stored connection row."""
        key = (account_id, fp)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = effective_settings(
                account_id,
                raw,
                overrides=self.overrides(account_id),
                allowed_custom_endpoints=self.allowed_custom_endpoints,
            ).settings
            self._parsed[key] = parsed
        return parsed

    def of(self, snapshot: Snapshot) -> dict[int, ConnectionSettings]:
        """account_id -> settings of the snapshot's active connections with valid settings."""
        active = {
            c.account_id: self.settings_of(c.account_id, c.account_settings, c.settings_fingerprint)
            for c in snapshot.connections
            if c.state == ConnectionState.ACTIVE
        }
        return {a: s for a, s in active.items() if s.is_valid}


def target_of(workspace_id: int, active: Mapping[int, ConnectionSettings]) -> Target:
    """The workspace's target, named by its first active connection (they share endpoint and
    key: that pair is what makes a workspace)."""
    first = next(iter(active.values()))
    return Target(
        workspace_id=workspace_id, endpoint=first.rest_endpoint, api_key=first.rest_api_key
    )
