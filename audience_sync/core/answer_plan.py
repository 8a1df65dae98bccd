"""A request answered object by object: who was acknowledged, and what to do with the rest.

The vendor room classifies each object a request did not get acknowledged; the sender hands
those verdicts here as :class:`ObjectVerdict` values (the core knows no vendor), and
:func:`plan_answer` splits the request's writes into the acknowledged, the failed (retried after
backoff, or dead-lettered), those whose field values were refused (flagged, then resent at once
without them, SPEC §5.3) and those to resend at once (not applied, not at fault). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from audience_sync.core.delivery_plan import FailedWrite, PendingWrite
from audience_sync.core.field_flags import FieldFlag, flags_of_refusal
from audience_sync.core.states import ObjectAction


@dataclass(frozen=True, kw_only=True)
class ObjectVerdict:
    """What the vendor's answer means for one object it did not acknowledge."""

    action: ObjectAction
    reason: str
    refused: Mapping[str, str] = field(default_factory=dict)  # DROP_FIELDS: field -> flag
    maybe_applied: bool = False  # the vendor may have applied it (keeps its keys uncertain)


@dataclass(frozen=True, kw_only=True)
class RefusedFields:
    """A pending write one or more of whose field values the vendor refused."""

    pending: PendingWrite
    flags: tuple[FieldFlag, ...]
    reason: str


@dataclass(frozen=True, kw_only=True)
class AnswerPlan:
    """What to record for each object of a request answered object by object."""

    accepted: tuple[PendingWrite, ...]
    failed: tuple[FailedWrite, ...]  # retried after backoff, or dead-lettered
    refused: tuple[RefusedFields, ...]  # flagged, then resent at once without those values
    resend: tuple[PendingWrite, ...]  # resent at once, no attempt spent


def plan_answer(batch: Sequence[PendingWrite], verdicts: Mapping[int, ObjectVerdict]) -> AnswerPlan:
    """Split a request's writes by the verdict of each position (absent: acknowledged)."""
    accepted: list[PendingWrite] = []
    failed: list[FailedWrite] = []
    refused: list[RefusedFields] = []
    resend: list[PendingWrite] = []
    for index, pending in enumerate(batch):
        verdict = verdicts.get(index)
        if verdict is None:
            accepted.append(pending)
            continue
        if verdict.action == ObjectAction.RESEND:
            resend.append(pending)
            continue
        if verdict.action == ObjectAction.DROP_FIELDS:
            flags = flags_of_refusal(pending.write.attributes, verdict.refused)
            if flags is not None:
                refused.append(RefusedFields(pending=pending, flags=flags, reason=verdict.reason))
                continue
            # The refused field was not sent: leaving it out changes nothing; retry.
        failed.append(
            FailedWrite(
                pending=pending,
                permanent=verdict.action == ObjectAction.DEAD_LETTER,
                reason=verdict.reason,
                maybe_applied=verdict.maybe_applied,
            )
        )
    return AnswerPlan(
        accepted=tuple(accepted),
        failed=tuple(failed),
        refused=tuple(refused),
        resend=tuple(resend),
    )
