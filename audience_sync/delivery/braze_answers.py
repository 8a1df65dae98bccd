"""Braze's verdict on each object of a request, handed to the core's plan (SPEC §5.3).

The Braze room classifies an answer (:mod:`audience_sync.braze.outcomes`); the core plans what
to record (:mod:`audience_sync.core.answer_plan`) without knowing any vendor. This module is the
one translation between the two vocabularies.
"""

from __future__ import annotations

from collections.abc import Sequence

from audience_sync.braze.object_errors import flag_for
from audience_sync.braze.outcomes import ObjectOutcome, TrackOutcome, Verdict
from audience_sync.core.answer_plan import AnswerPlan, ObjectVerdict, plan_answer
from audience_sync.core.delivery_plan import PendingWrite
from audience_sync.core.states import ObjectAction

_ACTIONS = {
    Verdict.RETRY: ObjectAction.RETRY,
    Verdict.DEAD_LETTER: ObjectAction.DEAD_LETTER,
    Verdict.DROP_FIELD: ObjectAction.DROP_FIELDS,
    Verdict.RESEND: ObjectAction.RESEND,
}


def object_verdict(outcome: ObjectOutcome) -> ObjectVerdict:
    """The core's form of Braze's verdict on one object."""
    return ObjectVerdict(
        action=_ACTIONS[outcome.verdict],
        reason=outcome.reason,
        refused={name: flag_for(name) for name in outcome.fields},
        maybe_applied=outcome.maybe_applied,
    )


def plan_partial(batch: Sequence[PendingWrite], outcome: TrackOutcome) -> AnswerPlan:
    """Split a ``PARTIAL`` answer's writes: acknowledged, failed, refused fields, to resend."""
    verdicts = {index: object_verdict(o) for index, o in outcome.per_object.items()}
    return plan_answer(batch, verdicts)
