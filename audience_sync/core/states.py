"""The one vocabulary of states and closed outcome reasons (StrEnums).

Stored as their string values (a ``StrEnum`` member *is* its string), so schema defaults,
repositories, senders and tests all name a state through this module, and the stored text
stays what it always was.
"""

from __future__ import annotations

from enum import StrEnum


class ConnectionState(StrEnum):
    """A connection (one mParticle configuration, SPEC §3.3)."""

    ACTIVE = "active"
    INVALID_SETTINGS = "invalid_settings"


class AudienceState(StrEnum):
    """An audience of a connection (SPEC §3.2)."""

    ACTIVE = "active"
    REMOVED = "removed"


class WorkspaceState(StrEnum):
    """A Braze workspace (one REST key on one instance, SPEC §5.5)."""

    ACTIVE = "active"
    SUSPENDED = "suspended"


class OutboxState(StrEnum):
    """A dirty Braze user in the outbox (SPEC §4.1, §5.2)."""

    PENDING = "pending"
    DEAD = "dead"


class SubscriptionAction(StrEnum):
    """What an ``audience_subscription_request`` asks for (SPEC §3.2)."""

    ADD = "add"
    UPDATE = "update"
    REMOVE = "remove"


class DeliveryOutcome(StrEnum):
    """The last outcome recorded for a Braze user in the acknowledged state."""

    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"


class DeliveryReason(StrEnum):
    """Why a sender handed users back or gave up, besides Braze's own classified reasons
    (those come from :mod:`audience_sync.braze.outcomes` as values)."""

    NO_ACTIVE_CONNECTION = "no_active_connection"
    CONNECTION_INVALID = "connection_invalid"
    RATE_LIMITED = "rate_limited"
    SHUTDOWN = "shutdown"
    OBJECT_TOO_LARGE = "object_too_large"
    INTERNAL_ERROR = "internal_error"  # delivery raised an unexpected error: a failed attempt
    FIELD_REFUSED = "field_refused"  # resent at once without a field value Braze refused
    RESENT = "resent"  # not applied, not at fault (a 400 named other objects): resent at once


class ObjectAction(StrEnum):
    """What to do with one object of a request the vendor did not acknowledge."""

    RETRY = "retry"  # after backoff, as an attempt
    DEAD_LETTER = "dead_letter"  # no resend can succeed (an identity error)
    DROP_FIELDS = "drop_fields"  # resend at once without the refused field values
    RESEND = "resend"  # resend at once, no attempt spent


class DeliveryCounter(StrEnum):
    """Per-workspace counters the senders keep besides the reasons above."""

    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"
    DEAD_LETTERED = "dead_lettered"
    DATAPOINTS = "datapoints"
    # What a resend-everything output would have spent on the same users (SPEC §4.5).
    DATAPOINTS_FULL = "datapoints_full"


class IntakeCounter(StrEnum):
    """Per-connection counters the Firehose intake keeps besides the unresolved-profile reasons
    of :mod:`audience_sync.core.identity` and ``subscription_<action>``."""

    DUPLICATE_MESSAGE = "duplicate_message"
    MEMBERSHIPS_APPLIED = "memberships_applied"
    AUDIENCE_REMOVED = "audience_removed"


class JobRunOutcome(StrEnum):
    """A recorded run of a scheduled job (SPEC §7)."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"


class CleanupKind(StrEnum):
    """Why a pending cleanup marks users dirty (SPEC §7 ``cleanup_removed``, §4.6)."""

    AUDIENCE_REMOVED = "audience_removed"  # removed with cleanupOnRemove: clear its attributes
    AUDIENCE_RENAMED = "audience_renamed"  # per-segment: In <new> = true, In <old> = null
    AUDIENCE_READDED = "audience_readded"  # added again (or renamed by an add)
    SETTINGS_CHANGED = "settings_changed"  # sendSegmentsAs or another delivery setting changed
    CONNECTION_MOVED = "connection_moved"  # new instance or REST key: resend in full there
class CurrentsEventState(StrEnum):
    """A queued Currents event (SPEC §6); a batched event leaves the queue for its batch."""

    QUEUED = "queued"
    HELD = "held"  # no feed takes it (no_feed): kept until one does
    DEAD = "dead"


class CurrentsBatchState(StrEnum):
    """A formed mParticle batch (accepted batches are deleted)."""

    PENDING = "pending"
    DEAD = "dead"


class FeedState(StrEnum):
    """An mParticle input feed: paused while its credentials are refused (SPEC §6.5)."""

    ACTIVE = "active"
    PAUSED = "paused"
