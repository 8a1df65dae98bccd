"""The pure delivery plan of one batch of claimed users of one workspace (SPEC §4.1, §5).

:func:`plan_batch` decides, for each claimed user, whether it waits (a connection with invalid
settings owns attributes in the workspace, or its resend spacing has not passed), needs no
write (its acknowledged state is recorded as is), or gets a write (the minimal difference,
with its write-ahead record). :func:`plan_failures` turns a request's failed users into the
retry or dead-letter decision of each, from the one retry policy. :func:`accepted_rows` is what
to record for the users Braze accepted. No I/O, no clock: ``now`` and the jitter values are
given.

Why one module past ~400 lines: the three plans share the claim's value types and the write
memo; apart, each would import the others' private helpers.
"""

from __future__ import annotations

import json
import typing as t
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from audience_sync.core.attributes import (
    Contribution,
    DesiredAttributes,
    Membership,
    Uncertain,
    Write,
    desired_attributes,
    diff,
    touched,
)
from audience_sync.core.connection import ConnectionSettings
from audience_sync.core.field_flags import withheld, withhold
from audience_sync.core.retry import RetryPolicy, decide_retry
from audience_sync.core.state import Acknowledged, AckRow, Claim, Failure, Snapshot
from audience_sync.core.states import DeliveryCounter, DeliveryOutcome

WAIT_FOR_CONNECTION_S = 60.0
"""Users waiting for a connection to become valid are looked at again after this long."""
NEVER_ACKNOWLEDGED: t.Final = Acknowledged(attributes=MappingProxyType({}))
"""The acknowledged state of a user Braze never confirmed anything for (one shared value)."""


# Built per user on the sender's hot path: a plain slotted dataclass, three times cheaper to
# build than a frozen one. Read only by convention, like every value of the plan.
@dataclass(kw_only=True, slots=True)
class PendingWrite:
    """A claimed user with the write computed for it."""

    claim: Claim
    write: Write
    flags: frozenset[str]
    # What earlier unconfirmed writes may have changed (before this attempt).
    uncertain: Uncertain
    # ``(uncertain | touched(write)).to_json()``, when the caller already has it.
    during: dict[str, t.Any] | None = None

    @property
    def external_id(self) -> str:
        """The Braze user."""
        return self.claim.external_id

    def in_flight_before(self) -> dict[str, t.Any] | None:
        """The write-ahead record to restore when Braze surely applied nothing."""
        return self.uncertain.to_json()

    def in_flight_during(self) -> dict[str, t.Any] | None:
        """The write-ahead record while this write is unconfirmed."""
        if self.during is not None:
            return self.during
        return (self.uncertain | touched(self.write)).to_json()


@dataclass(frozen=True, kw_only=True)
class FailedWrite:
    """A pending write that did not succeed, as the vendor's outcome classified it."""

    pending: PendingWrite
    permanent: bool  # retrying the same write cannot help: dead-letter now
    reason: str
    # Whether the vendor may have applied it (5xx, timeout, dropped connection): its keys then
    # stay uncertain until a later write confirms them.
    maybe_applied: bool


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """What to do with a batch of claimed users of one workspace."""

    # external_id -> due time: handed back without an attempt.
    deferred: Mapping[str, float]  # resend spacing not passed yet
    held_back: Mapping[str, float]  # a connection of theirs has invalid settings
    unchanged: tuple[AckRow, ...]  # no write needed: finish them
    changed_acks: tuple[AckRow, ...]  # those of ``unchanged`` whose acknowledged row differs
    pending: tuple[PendingWrite, ...]  # writes to send
    new_flags: Mapping[str, int]  # guard flags raised for the first time, per flag


@dataclass(frozen=True, kw_only=True)
class FailurePlan:
    """The outbox records of a request's failed users, and the counts by reason."""

    failures: tuple[Failure, ...]
    counts: Mapping[str, int]
    dead: tuple[Failure, ...]


def plan_batch(
    claims: Sequence[Claim],
    snapshot: Snapshot,
    active: Mapping[int, ConnectionSettings],
    *,
    now: float,
    min_resend_s: float,
    array_max_length: int,
    array_write: str,
) -> BatchPlan:
    """Plan the claimed users of one workspace; ``active`` holds its deliverable connections."""
    # A connection whose settings are invalid still owns attributes in this workspace: its
    # users wait until it is fixed (SPEC §3.4), instead of having those attributes cleared.
    blocked = {c.account_id for c in snapshot.connections} - set(active)
    held_back: dict[str, float] = {}
    deferred: dict[str, float] = {}
    unchanged: list[AckRow] = []
    pending: list[PendingWrite] = []
    new_flags: Counter[str] = Counter()
    memo: dict[tuple[t.Any, ...], tuple[Write, frozenset[str], dict[str, t.Any] | None]] = {}
    for claim in claims:
        if blocked and any(
            d.account_id in blocked for d in snapshot.desired.get(claim.external_id, ())
        ):
            held_back[claim.external_id] = now + WAIT_FOR_CONNECTION_S
            continue
        ack = snapshot.acknowledged.get(claim.external_id, NEVER_ACKNOWLEDGED)
        if ack.last_write_at is not None and now < ack.last_write_at + min_resend_s:
            deferred[claim.external_id] = ack.last_write_at + min_resend_s
            continue
        uncertain = Uncertain.from_json(claim.in_flight)
        write, flags, during = _compute_memo(
            # A user with refused field values has writes of its own: no sharing.
            {} if claim.external_id in snapshot.field_flags else memo,
            claim.external_id,
            snapshot,
            active,
            ack,
            uncertain,
            array_max_length=array_max_length,
            array_write=array_write,
        )
        for flag in flags - set(ack.flags):
            new_flags[flag] += 1
        if write.is_empty:
            unchanged.append(
                AckRow(
                    external_id=claim.external_id,
                    attributes=write.acknowledged,
                    flags=sorted(flags),
                    outcome=DeliveryOutcome.UNCHANGED,
                    wrote=False,
                )
            )
        else:
            pending.append(
                PendingWrite(
                    claim=claim, write=write, flags=flags, uncertain=uncertain, during=during
                )
            )
    return BatchPlan(
        deferred=deferred,
        held_back=held_back,
        unchanged=tuple(unchanged),
        changed_acks=tuple(r for r in unchanged if _ack_changed(r, snapshot)),
        pending=tuple(pending),
        new_flags=dict(new_flags),
    )


def fail_all(
    batch: Iterable[PendingWrite], *, permanent: bool, reason: str, maybe_applied: bool
) -> list[FailedWrite]:
    """The same failure for every write of a request."""
    return [
        FailedWrite(pending=p, permanent=permanent, reason=reason, maybe_applied=maybe_applied)
        for p in batch
    ]


def plan_failures(
    failed: Sequence[FailedWrite],
    policy: RetryPolicy,
    *,
    now: float,
    jitters: Sequence[float],
) -> FailurePlan:
    """Each failed user's next attempt (or dead letter) under ``policy``, and the counts;
    ``jitters`` holds one random value in [0, 1) per failed write."""
    failures: list[Failure] = []
    dead: list[Failure] = []
    counts: Counter[str] = Counter()
    for f, jitter in zip(failed, jitters, strict=True):
        p = f.pending
        attempts = p.claim.attempts + 1
        first_failure = p.claim.first_failure_at or now
        retry_at = None
        if not f.permanent:
            retry_at = decide_retry(
                policy,
                attempts=attempts,
                first_failure_at=first_failure,
                now=now,
                jitter=jitter,
            ).retry_at
        failure = Failure(
            external_id=p.claim.external_id,
            attempts=attempts,
            first_failure_at=first_failure,
            retry_at=retry_at,
            reason=f.reason,
            in_flight=p.in_flight_during() if f.maybe_applied else p.in_flight_before(),
        )
        failures.append(failure)
        if retry_at is None:
            dead.append(failure)
        counts[f.reason] += 1
    if dead:
        counts[DeliveryCounter.DEAD_LETTERED] += len(dead)
    return FailurePlan(failures=tuple(failures), counts=dict(counts), dead=tuple(dead))


def plan_claim_failures(
    claims: Sequence[Claim],
    policy: RetryPolicy,
    *,
    reason: str,
    now: float,
    jitters: Sequence[float],
) -> FailurePlan:
    """:func:`plan_failures` for claimed users whose delivery failed before or without a known
    write (an unexpected error): one more attempt each, retried or dead-lettered under
    ``policy``. Their write-ahead records are unknown here (``in_flight`` None): the caller
    keeps the stored ones."""
    failures: list[Failure] = []
    for claim, jitter in zip(claims, jitters, strict=True):
        attempts = claim.attempts + 1
        first_failure = claim.first_failure_at or now
        decision = decide_retry(
            policy, attempts=attempts, first_failure_at=first_failure, now=now, jitter=jitter
        )
        failures.append(
            Failure(
                external_id=claim.external_id,
                attempts=attempts,
                first_failure_at=first_failure,
                retry_at=decision.retry_at,
                reason=reason,
            )
        )
    dead = tuple(f for f in failures if f.retry_at is None)
    counts: dict[str, int] = {reason: len(failures)} if failures else {}
    if dead:
        counts[DeliveryCounter.DEAD_LETTERED] = len(dead)
    return FailurePlan(failures=tuple(failures), counts=counts, dead=dead)


def accepted_rows(
    accepted: Iterable[PendingWrite],
) -> tuple[list[AckRow], Counter[tuple[int, int]]]:
    """The acknowledged rows of writes the vendor accepted, and their data points per
    ``(account_id, audience_id)``."""
    # Users planned alike share one charges mapping (_compute_memo): add each mapping once,
    # times its users, rather than a Counter.update per user.
    charge_maps: dict[int, Mapping[tuple[int, int], int]] = {}
    users_of: Counter[int] = Counter()
    # Shared flag sets get one shared sorted tuple (read only, as every value of an AckRow).
    sorted_flags: dict[int, tuple[str, ...]] = {}
    rows = []
    for p in accepted:
        charge_maps[id(p.write.charges)] = p.write.charges
        users_of[id(p.write.charges)] += 1
        flags = sorted_flags.get(id(p.flags))
        if flags is None:
            flags = sorted_flags[id(p.flags)] = tuple(sorted(p.flags))
        rows.append(
            AckRow(
                external_id=p.claim.external_id,
                attributes=p.write.acknowledged,
                flags=flags,
                outcome=DeliveryOutcome.ACCEPTED,
                wrote=True,
            )
        )
    charges: Counter[tuple[int, int]] = Counter()
    for map_id, per_audience in charge_maps.items():
        for key, points in per_audience.items():
            charges[key] += points * users_of[map_id]
    return rows, charges


def _ack_changed(row: AckRow, snapshot: Snapshot) -> bool:
    before = snapshot.acknowledged.get(row.external_id)
    if before is None:
        return True
    return set(row.flags) != set(before.flags) or dict(row.attributes) != dict(before.attributes)


def _compute_memo(
    memo: dict[tuple[t.Any, ...], tuple[Write, frozenset[str], dict[str, t.Any] | None]],
    external_id: str,
    snapshot: Snapshot,
    active: Mapping[int, ConnectionSettings],
    ack: Acknowledged,
    uncertain: Uncertain,
    *,
    array_max_length: int,
    array_write: str,
) -> tuple[Write, frozenset[str], dict[str, t.Any] | None]:
    """:func:`_compute`, once per distinct input within one batch.

    The write depends on the user only through its desired rows, acknowledged attributes and
    uncertain keys (``active`` and ``snapshot.audience_accounts`` are the batch's); users
    sharing all three (say, new users in the same audiences) get the same write with their own
    ``external_id``. Also returns the write-ahead record of the write
    (:meth:`PendingWrite.in_flight_during`).
    """
    desired = snapshot.desired.get(external_id, ())
    acknowledged = ack.attributes_key
    if acknowledged is None:
        acknowledged = (
            json.dumps(ack.attributes, sort_keys=True, separators=(",", ":"))
            if ack.attributes
            else ""
        )
    # The snapshot gives users with equal desired rows one shared value: identity stands for
    # equality, and is cheaper to hash than the rows.
    key = (tuple(map(id, desired)), acknowledged, uncertain)
    hit = memo.get(key)
    if hit is None:
        write, flags = _compute(
            external_id,
            snapshot,
            active,
            ack,
            uncertain,
            array_max_length=array_max_length,
            array_write=array_write,
        )
        during = (uncertain | touched(write)).to_json()
        memo[key] = (write, flags, during)
        return write, flags, during
    template, flags, during = hit
    attributes = dict(template.attributes)
    attributes["external_id"] = external_id
    write = Write(
        external_id=external_id,
        attributes=attributes,
        # Shared by the users planned alike: read only, as every value of a Write.
        acknowledged=template.acknowledged,
        datapoints=template.datapoints,
        charges=template.charges,
    )
    return write, flags, during


def desired_of(
    external_id: str,
    snapshot: Snapshot,
    active: Mapping[int, ConnectionSettings],
    *,
    array_max_length: int,
) -> DesiredAttributes:
    """What one user of the snapshot should hold in Braze: every active connection's wishes
    merged (the sender diffs it with the acknowledged state; the audit compares with Braze)."""
    contributions = []
    for d in snapshot.desired.get(external_id, ()):
        settings = active.get(d.account_id)
        if settings is None:
            continue
        contributions.append(
            Contribution(
                account_id=d.account_id,
                parts=settings.parts,
                memberships=[
                    Membership(audience_id=a, name=n, is_member=m) for a, n, m in d.memberships
                ],
                api_key=settings.api_key,
                email=d.email,
                email_updated_at=d.email_updated_at,
                push_tokens=d.push_tokens,
                update_existing_only=settings.update_existing_only,
            )
        )
    return desired_attributes(contributions, array_max_length=array_max_length)


def _compute(
    external_id: str,
    snapshot: Snapshot,
    active: Mapping[int, ConnectionSettings],
    ack: Acknowledged,
    uncertain: Uncertain,
    *,
    array_max_length: int,
    array_write: str,
) -> tuple[Write, frozenset[str]]:
    desired = desired_of(external_id, snapshot, active, array_max_length=array_max_length)
    write = diff(
        external_id,
        desired,
        ack.attributes,
        array_write=array_write,
        audience_accounts=snapshot.audience_accounts,
        uncertain=uncertain,
    )
    held = withheld(write.attributes, snapshot.field_flags.get(external_id, ()))
    if not held:
        return write, desired.flags
    # A value Braze refused is not sent again until it changes; the rest of the write goes.
    write = diff(
        external_id,
        withhold(desired, held),
        ack.attributes,
        array_write=array_write,
        audience_accounts=snapshot.audience_accounts,
        uncertain=uncertain,
    )
    return write, desired.flags | {f.flag for f in held}
