"""``POST /users/export/ids``: what Braze actually holds, for the audit (SPEC §7).

Three parts, like the track client: :func:`chunk_ids` packs requests (at most
:data:`MAX_IDS_PER_REQUEST` ids), :func:`classify_export_response` turns an answer into an
:class:`ExportOutcome` value, and :class:`Exporter` sends within its own rate budget
(``braze.export_requests_per_minute``, Braze's limit for this endpoint: 250 per minute), steered
by the ``x-ratelimit-*`` headers and paused by a 429 exactly as the track sender is
(:mod:`~audience_sync.braze.ratelimit`, :mod:`~audience_sync.braze.headers`). Nothing here
raises for an HTTP status.
"""

from __future__ import annotations

import threading
import time
import typing as t
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from audience_sync.braze.client import BrazeClient, TrackResponse
from audience_sync.braze.headers import retry_after_at
from audience_sync.braze.keys import fingerprint
from audience_sync.braze.ratelimit import RateBudget

MAX_IDS_PER_REQUEST = 50
"""Braze: "up to 50 external_ids" per request."""
FIELDS_TO_EXPORT = ("external_id", "custom_attributes", "email")
"""Only what the engine writes: fewer fields, smaller answers."""
MAX_TRANSIENT_TRIES = 3
"""Tries of one chunk after a 5xx, timeout or dropped connection before giving up on it for
this run (its users stay unverified and come first next run)."""
RATE_LIMIT_PAUSE_S = 60.0
"""Pause after a 429 that names no time: the budget's window is a minute."""


class ExportKind(StrEnum):
    """What became of one export request."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"  # 429: wait, then the same request again
    TRANSIENT = "transient"  # 5xx, timeout, dropped connection: try again later
    REFUSED = "refused"  # 401/403: key invalid or lacks users.export.ids permission
    BAD_REQUEST = "bad_request"  # 4xx otherwise: do not resend unchanged
    DRY_RUN = "dry_run"  # braze.dry_run: nothing was observed


@dataclass(frozen=True, kw_only=True)
class ExportedUser:
    """What Braze holds for one user (of the exported fields)."""

    external_id: str
    custom_attributes: Mapping[str, t.Any] = field(default_factory=dict)
    email: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExportOutcome:
    """One answer: the users found, the ids Braze does not know, or why nothing came."""

    kind: ExportKind
    users: Mapping[str, ExportedUser] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    retry_at: float | None = None
    reason: str = ""


def chunk_ids(external_ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """Requests of at most :data:`MAX_IDS_PER_REQUEST` distinct ids, in the given order."""
    unique = list(dict.fromkeys(external_ids))
    for start in range(0, len(unique), MAX_IDS_PER_REQUEST):
        yield unique[start : start + MAX_IDS_PER_REQUEST]


def classify_export_response(
    response: TrackResponse, *, requested: Sequence[str], now: float
) -> ExportOutcome:
    """An export answer as a value (pure). Users absent from ``users`` are ``missing``, whether
    or not Braze lists them under ``invalid_user_ids``."""
    status = response.status
    if status is None:
        return ExportOutcome(kind=ExportKind.TRANSIENT, reason=response.error or "no_answer")
    if status == 429:
        return ExportOutcome(
            kind=ExportKind.RATE_LIMITED,
            retry_at=retry_after_at(response.headers, now) or now + RATE_LIMIT_PAUSE_S,
            reason="rate_limited",
        )
    if status >= 500:
        return ExportOutcome(kind=ExportKind.TRANSIENT, reason=f"http_{status}")
    if status in (401, 403):
        return ExportOutcome(kind=ExportKind.REFUSED, reason=f"http_{status}")
    body = response.body
    if not (200 <= status < 300) or not isinstance(body, Mapping):
        return ExportOutcome(kind=ExportKind.BAD_REQUEST, reason=f"http_{status}")
    if body.get("dry_run") is True:
        return ExportOutcome(kind=ExportKind.DRY_RUN, reason="dry_run")
    raw_users = body.get("users")
    if not isinstance(raw_users, list):
        return ExportOutcome(kind=ExportKind.BAD_REQUEST, reason="no_users_in_answer")
    wanted = set(requested)
    users: dict[str, ExportedUser] = {}
    for raw in raw_users:
        if not isinstance(raw, Mapping):
            continue
        external_id = raw.get("external_id")
        if not isinstance(external_id, str) or external_id not in wanted:
            continue
        attributes = raw.get("custom_attributes")
        email = raw.get("email")
        users[external_id] = ExportedUser(
            external_id=external_id,
            custom_attributes=dict(attributes) if isinstance(attributes, Mapping) else {},
            email=email if isinstance(email, str) else None,
        )
    missing = tuple(e for e in requested if e not in users)
    return ExportOutcome(kind=ExportKind.OK, users=users, missing=missing)


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """Every chunk of one :meth:`Exporter.export` call, merged."""

    users: Mapping[str, ExportedUser]
    missing: tuple[str, ...]
    unread: tuple[str, ...]  # ids no answer covered (transient failures, refusal, stop)
    requests: int
    kind: ExportKind  # OK, or the reason the last unread chunk was not read


class Exporter:
    """Sends export requests within a per-key budget of ``requests_per_minute``.

    Args:
        client: the HTTP adapter (pooled; shared with nothing that needs another budget).
        requests_per_minute: ``braze.export_requests_per_minute``.
        stop: set to give up between requests (shutdown, lost job lease); waits end at once.
        clock: epoch seconds.
    """

    def __init__(
        self,
        client: BrazeClient,
        *,
        requests_per_minute: float,
        stop: threading.Event | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.stop = stop or threading.Event()
        self.clock = clock or time.time
        self.budget = RateBudget(requests_per_minute / 60.0)

    def _wait(self, seconds: float) -> bool:
        """Sleep; False if asked to stop meanwhile."""
        return not self.stop.wait(seconds) if seconds > 0 else not self.stop.is_set()

    def export(self, endpoint: str, api_key: str, external_ids: Sequence[str]) -> ExportResult:
        """Read every id, 50 per request; 429s wait and resend, transient failures are tried
        :data:`MAX_TRANSIENT_TRIES` times, a refusal ends the call (the key is wrong for all)."""
        key = fingerprint(api_key)
        users: dict[str, ExportedUser] = {}
        missing: list[str] = []
        unread: list[str] = []
        requests = 0
        last_kind = ExportKind.OK
        chunks = list(chunk_ids(external_ids))
        for index, chunk in enumerate(chunks):
            tries = 0
            while True:
                if not self._wait(self.budget.reserve(key)):
                    outcome = ExportOutcome(kind=ExportKind.TRANSIENT, reason="stopped")
                    break
                response = self.client.export_ids(endpoint, api_key, chunk, FIELDS_TO_EXPORT)
                requests += 1
                now = self.clock()
                self.budget.observe(key, response.headers)
                outcome = classify_export_response(response, requested=chunk, now=now)
                if outcome.kind is ExportKind.RATE_LIMITED:
                    retry_at = outcome.retry_at or now + RATE_LIMIT_PAUSE_S
                    self.budget.pause(key, retry_at)
                    continue  # not a try: the budget waits until the pause ends
                if outcome.kind is ExportKind.TRANSIENT:
                    tries += 1
                    if tries < MAX_TRANSIENT_TRIES and self._wait(min(2.0**tries, 10.0)):
                        continue
                break
            if outcome.kind is ExportKind.OK:
                users.update(outcome.users)
                missing.extend(outcome.missing)
                continue
            last_kind = outcome.kind
            unread.extend(chunk)
            if outcome.kind in (ExportKind.REFUSED, ExportKind.DRY_RUN) or self.stop.is_set():
                for rest in chunks[index + 1 :]:
                    unread.extend(rest)
                break
        return ExportResult(
            users=users,
            missing=tuple(missing),
            unread=tuple(unread),
            requests=requests,
            kind=last_kind,
        )
