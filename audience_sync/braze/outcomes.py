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

Identity error ``type`` strings seen from Braze: ``"provided external_id is blacklisted and
disallowed"`` (post_user_track docs), ``"'external_id' or 'braze_id' or 'user_alias' is
required"`` and ``"'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"``
(Braze responses captured in public client test-suites). The symbolic names of SPEC §5.3
(``BLACKLISTED_EXTERNAL_USER_ID``, ``EXTERNAL_USER_ID_TOO_LARGE``) are accepted too.
"""

from __future__ import annotations

import re
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from audience_sync.braze.headers import normalize_headers, retry_after_at

TRACKED_ARRAY = "attributes"
"""The only ``input_array`` audience-sync sends."""

DEFAULT_RATE_LIMIT_WAIT_S = 1.0
"""Pause after a 429 that says nothing about how long to wait."""


class Kind(StrEnum):
    """What the sender does with a whole request (values equal their names)."""

    ACCEPTED = "ACCEPTED"  # acknowledge every object
    PARTIAL = "PARTIAL"  # ``per_object`` failed (permanent or not); acknowledge the rest
    RETRY_ALL = "RETRY_ALL"  # transient, or unknown which failed: retry every object
    RATE_LIMITED = "RATE_LIMITED"  # pause the key until ``retry_at``; not an attempt
    SPLIT = "SPLIT"  # resend in smaller requests to isolate the culprit; nothing was applied
    SUSPEND = "SUSPEND"  # 401/403: suspend the connection (SPEC §5.5)
    CONFIG_ERROR = "CONFIG_ERROR"  # wrong URL or content type: suspend and report
    BAD_REQUEST = "BAD_REQUEST"  # a lone object Braze refuses as-is: permanent for it


@dataclass(frozen=True, kw_only=True)
class ObjectOutcome:
    """Why one object of a request failed, and whether retrying it unchanged can help."""

    permanent: bool
    reason: str


@dataclass(frozen=True, kw_only=True)
class TrackOutcome:
    """The classification of one ``/users/track`` answer.

    Attributes:
        kind: one of :class:`Kind` (a ``str``).
        reason: short snake_case counter reason (``success``, ``http_503``, ``rate_limited``...).
        per_object: failed objects only, keyed by position in the request body. For ``SPLIT``
            and ``BAD_REQUEST`` it names the objects Braze blamed, when it said (nothing of the
            request was applied either way).
        retry_at: epoch second to pause the key until, for ``RATE_LIMITED``.
        detail: Braze's own words (message and error types), for logs and the API; no payload.
    """

    kind: str
    reason: str
    per_object: Mapping[int, ObjectOutcome] = field(default_factory=lambda: MappingProxyType({}))
    retry_at: float | None = None
    detail: str | None = None


class _Response(t.Protocol):
    status: int | None
    headers: Mapping[str, str]
    body: t.Any
    error: str | None


# Permanent identity errors: retrying the same user unchanged can never succeed.
_PERMANENT_TYPES = {
    "BLACKLISTED_EXTERNAL_USER_ID": "blacklisted_external_id",
    "EXTERNAL_USER_ID_TOO_LARGE": "external_id_too_large",
    "MISSING_EXTERNAL_USER_ID": "missing_identifier",
}
_PERMANENT_PATTERNS = (
    (re.compile(r"black\s*list|block\s*list|deny\s*list", re.I), "blacklisted_external_id"),
    (
        re.compile(r"external_?id.*(too (large|long)|exceed|max)", re.I),
        "external_id_too_large",
    ),
    (
        re.compile(r"(external_id|braze_id|user_alias).*\b(is|are) required", re.I),
        "missing_identifier",
    ),
    (re.compile(r"no (user )?identifier", re.I), "missing_identifier"),
)
_RETRYABLE_OBJECT_REASON = "object_error"


def classify_object_error(error_type: str) -> ObjectOutcome:
    """Classify the ``type`` of one ``errors`` entry: identity errors are permanent."""
    symbol = error_type.strip().upper()
    if symbol in _PERMANENT_TYPES:
        return ObjectOutcome(permanent=True, reason=_PERMANENT_TYPES[symbol])
    for pattern, reason in _PERMANENT_PATTERNS:
        if pattern.search(error_type):
            return ObjectOutcome(permanent=True, reason=reason)
    return ObjectOutcome(permanent=False, reason=_RETRYABLE_OBJECT_REASON)


def _index_of(entry: t.Any, sent: int) -> tuple[int | None, str]:
    """Position named by an ``errors`` entry, or ``None`` with why it cannot be placed."""
    if not isinstance(entry, Mapping):
        return None, "error_without_index"
    index = entry.get("index")
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool):
        return None, "error_without_index"
    if entry.get("input_array") != TRACKED_ARRAY:
        return None, "error_unknown_array"
    if not 0 <= index < sent:
        return None, "error_index_out_of_range"
    return index, ""


def _error_types(body: t.Any) -> list[str]:
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list):
        return []
    out = []
    for entry in errors:
        if isinstance(entry, Mapping):
            out.append(str(entry.get("type", "")))
        else:
            out.append(str(entry))
    return out


def _detail(body: t.Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    parts = []
    if body.get("message") is not None:
        parts.append(str(body["message"]))
    types = sorted(set(_error_types(body)))
    if types:
        parts.append("errors: " + "; ".join(types))
    return " | ".join(parts)[:500] or None


def _per_object(body: t.Any, sent: int) -> tuple[dict[int, ObjectOutcome], str | None]:
    """Map ``errors`` entries to positions; the second value is set if one cannot be placed."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if errors is None:
        return {}, None
    if not isinstance(errors, list):
        return {}, "error_without_index"
    failed: dict[int, ObjectOutcome] = {}
    for entry in errors:
        index, why = _index_of(entry, sent)
        if index is None:
            return {}, why
        outcome = classify_object_error(str(entry.get("type", "")))
        previous = failed.get(index)
        # Several errors on one object: a permanent one decides.
        if previous is None or (outcome.permanent and not previous.permanent):
            failed[index] = outcome
    return failed, None


def _refused(kind_if_many: Kind, reason: str, body: t.Any, sent: int) -> TrackOutcome:
    """400/413 and other refusals of the whole request: split to isolate, or give up on one."""
    blamed, _ = _per_object(body, sent)
    kind = kind_if_many if sent > 1 else Kind.BAD_REQUEST
    return TrackOutcome(
        kind=kind, reason=reason, per_object=MappingProxyType(blamed), detail=_detail(body)
    )


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
        The outcome; ``per_object`` lists failed objects only.
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
        failed, unplaced = _per_object(body, sent)
        if unplaced is not None:
            return TrackOutcome(kind=Kind.RETRY_ALL, reason=unplaced, detail=_detail(body))
        if not failed:
            return TrackOutcome(kind=Kind.ACCEPTED, reason="success")
        return TrackOutcome(
            kind=Kind.PARTIAL,
            reason="partial",
            per_object=MappingProxyType(failed),
            detail=_detail(body),
        )

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
        return _refused(Kind.SPLIT, "too_large", body, sent)
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
