"""The values the delivery diff works on: what a Braze user should hold (desired), what Braze
confirmed (acknowledged), the snapshot of both for a batch, and the outbox's view of a claimed
user and of a failed attempt. The store builds and persists them; the core decides with them.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from audience_sync.core.field_flags import FieldFlag


# Built per user on the sender's hot path: a plain slotted dataclass, three times cheaper to
# build than a frozen one. Read only by convention, like every value of the plan.
@dataclass(kw_only=True, slots=True)
class Claim:
    """One Braze user a sender holds a lease on."""

    workspace_id: int
    external_id: str
    generation: int
    attempts: int
    first_failure_at: float | None
    in_flight: Mapping[str, t.Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Failure:
    """A failed attempt for one user: retry at ``retry_at``, or dead-letter if None."""

    external_id: str
    attempts: int
    first_failure_at: float
    retry_at: float | None
    reason: str
    # The write-ahead record to keep: the union with this attempt when Braze may have applied
    # it (5xx, timeout, dropped connection), the previous record when it surely did not.
    in_flight: Mapping[str, t.Any] | None = None


@dataclass(frozen=True, kw_only=True)
class Desired:
    """One connection's desired state for one user (rows, not yet merged)."""

    account_id: int
    email: str | None = None
    email_updated_at: float = 0.0
    push_tokens: tuple[str, ...] = ()
    # (audience_id, name, is_member); audiences removed with cleanup are left out.
    memberships: tuple[tuple[int, str, bool], ...] = ()


# Built per user on the sender's hot path: a plain slotted dataclass, three times cheaper to
# build than a frozen one. Read only by convention, like every value of the plan.
@dataclass(kw_only=True, slots=True)
class Acknowledged:
    """What Braze confirmed for one user."""

    attributes: Mapping[str, t.Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    last_write_at: float | None = None
    # ``attributes`` as canonical JSON text (sorted keys), when the store has it: the plan's
    # memo key. Computed from ``attributes`` when None.
    attributes_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConnectionRow:
    """A connection attached to the workspace, with its raw settings (parsed by the caller)."""

    account_id: int
    account_settings: Mapping[str, t.Any]
    settings_fingerprint: str
    state: str


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Everything needed to compute the writes for a batch of users of one workspace."""

    connections: tuple[ConnectionRow, ...]
    desired: Mapping[str, tuple[Desired, ...]]
    acknowledged: Mapping[str, Acknowledged]
    audience_accounts: Mapping[int, int]
    # Field values Braze refused, per user: withheld until they change (SPEC §5.3).
    field_flags: Mapping[str, tuple[FieldFlag, ...]] = field(default_factory=dict)


# Built per user on the sender's hot path: a plain slotted dataclass, three times cheaper to
# build than a frozen one. Read only by convention, like every value of the plan.
@dataclass(kw_only=True, slots=True)
class AckRow:
    """The new acknowledged state of one user after an outcome."""

    external_id: str
    attributes: Mapping[str, t.Any]
    flags: Sequence[str]
    outcome: str
    wrote: bool
