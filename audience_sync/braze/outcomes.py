"""Classify every answer of ``POST /users/track`` (SPEC §5.3) in exactly one function (pure).

The sender acts on the returned :class:`TrackOutcome`; nothing here sleeps, retries or logs.

Braze's answer shapes (https://www.braze.com/docs/api/errors/ and
https://www.braze.com/docs/api/endpoints/user_data/post_user_track/):

- success: ``{"message": "success", "attributes_processed": n}``
- success with non-fatal errors: ``{"message": "success", "errors": [{"type": "...",
  "input_array": "attributes", "index": 1}]}``; the index counts within the named array, and
  every object not named was processed;
- fatal: ``{"message": <fatal error message>, "errors": [...]}`` with a 4xx/5xx status;
- maintenance: ``202 {"message": "queued"}``: received and queued, processed later.

How each ``errors`` entry maps to a verdict for its object (dead-letter for identity errors,
drop the refused field and resend for validation errors of one field, retry otherwise) lives in
``object_errors``; this module places the entries (``input_array`` + ``index``; a missing
``input_array`` means ``attributes``) and decides for the whole request. A 400 that names its
culprits by index gets the same per-object verdicts as a 2xx, so the two paths agree.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from audience_sync.braze.headers import normalize_headers, retry_after_at
from audience_sync.braze.object_errors import ErrorClass, classify_error_type

TRACKED_ARRAY = "attributes"
"""The only ``input_array`` audience-sync sends."""

DEFAULT_RATE_LIMIT_WAIT_S = 1.0
"""Pause after a 429 that says nothing about how long to wait."""


class Kind(StrEnum):
    """What the sender does with a whole request (values equal their names)."""

    ACCEPTED = "ACCEPTED"  # acknowledge every object
    PARTIAL = "PARTIAL"  # act on each ``per_object`` verdict; acknowledge the objects not in it
    RETRY_ALL = "RETRY_ALL"  # transient, or unknown which failed: retry every object
    RATE_LIMITED = "RATE_LIMITED"  # pause the key until ``retry_at``; not an attempt
    SPLIT = "SPLIT"  # resend in smaller requests to isolate the culprit; nothing was applied
    SUSPEND = "SUSPEND"  # 401/403: suspend the connection (SPEC §5.5)
    CONFIG_ERROR = "CONFIG_ERROR"  # wrong URL or content type: suspend and report
    BAD_REQUEST = "BAD_REQUEST"  # a lone object Braze refuses as-is: permanent for it


class Verdict(StrEnum):
    """What to do with one object of a ``PARTIAL`` answer (values equal their names)."""

    RETRY = "RETRY"  # after backoff, as an attempt (dead-letter past the retry policy)
    DEAD_LETTER = "DEAD_LETTER"  # an identity error: no resend can ever succeed
    DROP_FIELD = "DROP_FIELD"  # ``fields`` refused: resend at once without them, flag them
    RESEND = "RESEND"  # not applied and not at fault (a 400 blamed others): resend at once


@dataclass(frozen=True, kw_only=True)
class ObjectOutcome:
    """Why one object of a request was not acknowledged, and what to do with it.

    Attributes:
        verdict: one of :class:`Verdict`.
        reason: snake_case counter reason (``external_id_too_large``, ``invalid_email``...).
        fields: for ``DROP_FIELD``, the refused attribute names, sorted (``("email",)``).
        maybe_applied: Braze may have applied it (an error without an index left it unknown).
    """

    verdict: Verdict
    reason: str
    fields: tuple[str, ...] = ()
    maybe_applied: bool = False

    @property
    def permanent(self) -> bool:
        """The user gives up now (dead-letter) rather than after the retry policy."""
        return self.verdict == Verdict.DEAD_LETTER


@dataclass(frozen=True, kw_only=True)
class TrackOutcome:
    """The classification of one ``/users/track`` answer.

    Attributes:
        kind: one of :class:`Kind` (a ``str``).
        reason: short snake_case counter reason (``success``, ``http_503``, ``rate_limited``...).
        per_object: for ``PARTIAL``, every object not acknowledged, keyed by position in the
            request body, with its verdict; empty for every other kind.
        retry_at: epoch second to pause the key until, for ``RATE_LIMITED``.
        detail: Braze's own words (message and error types), for logs and the API; no payload.
    """

    kind: str
    reason: str
    per_object: Mapping[int, ObjectOutcome] = field(default_factory=lambda: MappingProxyType({}))
    retry_at: float | None = None
    detail: str | None = None

    def verdict_of(self, index: int) -> ObjectOutcome | None:
        """The verdict for the object at ``index`` of a ``PARTIAL``; ``None``: acknowledged."""
        return self.per_object.get(index)


class _Response(t.Protocol):
    status: int | None
    headers: Mapping[str, str]
    body: t.Any
    error: str | None


_VERDICT_OF_CLASS = {
    ErrorClass.IDENTITY: Verdict.DEAD_LETTER,
    ErrorClass.FIELD: Verdict.DROP_FIELD,
    ErrorClass.RETRY: Verdict.RETRY,
}
_PRECEDENCE = {Verdict.DEAD_LETTER: 3, Verdict.DROP_FIELD: 2, Verdict.RETRY: 1, Verdict.RESEND: 0}
MAX_DETAIL_CHARS = 500


def classify_object_error(error_type: object) -> ObjectOutcome:
    """The verdict one ``errors`` entry's ``type`` gives its object (see ``object_errors``)."""
    meaning = classify_error_type(error_type)
    fields = (meaning.field,) if meaning.field is not None else ()
    return ObjectOutcome(
        verdict=_VERDICT_OF_CLASS[meaning.error_class], reason=meaning.reason, fields=fields
    )


def _combine(previous: ObjectOutcome | None, new: ObjectOutcome) -> ObjectOutcome:
    """Several errors on one object: the strongest verdict decides; refused fields add up."""
    if previous is None:
        return new
    if previous.verdict == new.verdict == Verdict.DROP_FIELD:
        fields = tuple(sorted(set(previous.fields) | set(new.fields)))
        return ObjectOutcome(verdict=Verdict.DROP_FIELD, reason=previous.reason, fields=fields)
    if _PRECEDENCE[new.verdict] > _PRECEDENCE[previous.verdict]:
        return new
    return previous


def _index_of(entry: t.Any, sent: int) -> tuple[int | None, str]:
    """Position named by an ``errors`` entry, or ``None`` with why it cannot be placed."""
    if not isinstance(entry, Mapping):
        return None, "error_without_index"
    index = entry.get("index")
    if isinstance(index, str) and index.strip().isdigit() and len(index) < 12:
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool):
        return None, "error_without_index"
    # A missing ``input_array`` means ``attributes``: the only array we send (SPEC §5.3).
    if entry.get("input_array", TRACKED_ARRAY) not in (TRACKED_ARRAY, None):
        return None, "error_unknown_array"
    if not 0 <= index < sent:
        return None, "error_index_out_of_range"
    return index, ""


def _error_types(body: t.Any) -> list[str]:
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list):
        return []
    out = []
    for entry in errors[:100]:
        value = entry.get("type", "") if isinstance(entry, Mapping) else entry
        out.append(value[:200] if isinstance(value, str) else repr(value)[:200])
    return out


def _detail(body: t.Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    parts = []
    message = body.get("message")
    if message is not None:
        parts.append(message[:200] if isinstance(message, str) else repr(message)[:200])
    types = sorted(set(_error_types(body)))
    if types:
        parts.append("errors: " + "; ".join(types))
    return " | ".join(parts)[:MAX_DETAIL_CHARS] or None


def _placed(body: t.Any, sent: int) -> tuple[dict[int, ObjectOutcome], str | None]:
    """Verdicts of the ``errors`` entries that name an object, and why others could not.

    Returns:
        The verdict per position named, and the reason of the first entry that names none
        (``None`` when every entry was placed).
    """
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if errors is None:
        return {}, None
    if not isinstance(errors, list):
        return {}, "error_without_index"
    placed: dict[int, ObjectOutcome] = {}
    unplaced: str | None = None
    for entry in errors:
        index, why = _index_of(entry, sent)
        if index is None:
            unplaced = unplaced or why
            continue
        placed[index] = _combine(placed.get(index), classify_object_error(entry.get("type")))
    return placed, unplaced


def _partial(
    reason: str,
    placed: Mapping[int, ObjectOutcome],
    sent: int,
    *,
    others: ObjectOutcome | None,
    body: t.Any,
) -> TrackOutcome:
    """A ``PARTIAL``: ``placed`` verdicts, and ``others`` (if any) for every unnamed object."""
    per_object = dict(placed)
    if others is not None:
        for index in range(sent):
            per_object.setdefault(index, others)
    return TrackOutcome(
        kind=Kind.PARTIAL,
        reason=reason,
        per_object=MappingProxyType(dict(sorted(per_object.items()))),
        detail=_detail(body),
    )


def _refused(
    kind_if_many: Kind, reason: str, body: t.Any, sent: int, *, culprits: bool = True
) -> TrackOutcome:
    """A whole request refused (nothing applied).

    When Braze names the culprits by index (and ``culprits`` allows it), each gets the verdict
    its error gives in a 2xx (so a bad email is dropped and resent in both paths) and the
    others are resent at once. Otherwise split to isolate the culprit; give up on a lone object.
    """
    placed, _ = _placed(body, sent) if culprits else ({}, None)
    if placed:
        resend = ObjectOutcome(verdict=Verdict.RESEND, reason=reason)
        return _partial(reason, placed, sent, others=resend, body=body)
    kind = kind_if_many if sent > 1 else Kind.BAD_REQUEST
    return TrackOutcome(kind=kind, reason=reason, detail=_detail(body))


def classify_track_response(
    status: int | None,
    headers: Mapping[str, str],
    body: t.Any,
    *,
    sent: int,
    now: float,
    error: str | None = None,
) -> TrackOutcome:
    """Classify one ``/users/track`` answer.

    Args:
        status: HTTP status, or ``None`` when no answer came (connection error, timeout,
            dropped connection).
        headers: response headers, names in any case.
        body: the parsed JSON body, or ``None``.
        sent: number of objects in the request (positions ``0 .. sent - 1``).
        now: current epoch second (for ``retry_at``).
        error: the client's reason when ``status`` is ``None`` (``timeout``,
            ``connection_error``, ``invalid_url``); defaults to ``connection_error``.

    Returns:
        The outcome; for ``PARTIAL``, ``per_object`` holds the verdict of every object not
        acknowledged (it never raises, whatever the status, headers or body).
    """
    if status is None:
        if error == "invalid_url":
            return TrackOutcome(kind=Kind.CONFIG_ERROR, reason="invalid_url")
        return TrackOutcome(kind=Kind.RETRY_ALL, reason=error or "connection_error")

    if 200 <= status < 300:
        if not isinstance(body, Mapping):
            return TrackOutcome(kind=Kind.RETRY_ALL, reason="unparseable_body")
        message = body.get("message")
        if message == "queued":
            # 202 during Braze maintenance: received and queued, processed later
            # (https://www.braze.com/docs/api/errors/ "Queued responses"). Resending would
            # spend the data points twice.
            return TrackOutcome(kind=Kind.ACCEPTED, reason="queued", detail=_detail(body))
        if message != "success":
            return TrackOutcome(
                kind=Kind.RETRY_ALL, reason="unexpected_message", detail=_detail(body)
            )
        placed, unplaced = _placed(body, sent)
        if unplaced is None:
            if not placed:
                return TrackOutcome(kind=Kind.ACCEPTED, reason="success")
            return _partial("partial", placed, sent, others=None, body=body)
        if not placed:
            # Unknown which failed, and any of them may have been applied.
            return TrackOutcome(kind=Kind.RETRY_ALL, reason=unplaced, detail=_detail(body))
        # Keep what the indexed errors say; retry only the users none of them names.
        unknown = ObjectOutcome(verdict=Verdict.RETRY, reason=unplaced, maybe_applied=True)
        return _partial("partial_unindexed", placed, sent, others=unknown, body=body)

    if status == 429:
        retry_at = retry_after_at(normalize_headers(headers), now)
        if retry_at is None:
            retry_at = now + DEFAULT_RATE_LIMIT_WAIT_S
        return TrackOutcome(
            kind=Kind.RATE_LIMITED, reason="rate_limited", retry_at=retry_at, detail=_detail(body)
        )
    if status in (401, 403):
        reason = "unauthorized" if status == 401 else "forbidden"
        return TrackOutcome(kind=Kind.SUSPEND, reason=reason, detail=_detail(body))
    if status in (404, 405, 415):
        reason = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
        return TrackOutcome(kind=Kind.CONFIG_ERROR, reason=reason[status], detail=_detail(body))
    if status == 413:
        # Too large is about the whole body, not an object's content: always split.
        return _refused(Kind.SPLIT, "too_large", body, sent, culprits=False)
    if status == 400:
        return _refused(Kind.SPLIT, "bad_request", body, sent)
    if status == 408 or status >= 500:
        return TrackOutcome(kind=Kind.RETRY_ALL, reason=f"http_{status}", detail=_detail(body))
    if 400 <= status < 500:
        # Other refusals (409, 422, ...): treated like 400, never retried unchanged forever.
        return _refused(Kind.SPLIT, f"http_{status}", body, sent)
    # 1xx/3xx: a redirect means the endpoint is not Braze's REST URL.
    return TrackOutcome(kind=Kind.CONFIG_ERROR, reason=f"http_{status}", detail=_detail(body))


def classify_response(response: _Response, *, sent: int, now: float) -> TrackOutcome:
    """:func:`classify_track_response` for a ``TrackResponse`` of the client."""
    return classify_track_response(
        response.status,
        response.headers,
        response.body,
        sent=sent,
        now=now,
        error=response.error,
    )
