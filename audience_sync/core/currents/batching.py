"""Queued events → mParticle batches (SPEC §6.3, §6.4).

A batch holds events of one user for one feed, in arrival order, under 128 KB. Events of a user
are cut into a new batch when the envelope (identities, device info, user attributes) changes or
the size limit is reached, so arrival order per user is kept across batches. A batch's content
is fixed once formed; its ``source_request_id`` is derived from its feed and event ids, so a
retry is the same request to mParticle (which deduplicates on it).
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from audience_sync.core.currents.validation import MAX_BATCH_BYTES, batch_problems

SCHEMA_VERSION = 2


@dataclass(frozen=True, kw_only=True)
class QueuedEvent:
    """An event waiting in the queue, its parts serialised once at intake.

    ``envelope_json`` is the JSON object of ``user_identities``, ``device_info`` and
    ``user_attributes``; ``event_json`` the JSON of one ``events[]`` entry.
    """

    seq: int
    event_id: str
    feed: str
    external_user_id: str
    received_at: float
    envelope_json: str
    event_json: str


@dataclass(frozen=True, kw_only=True)
class PlannedBatch:
    """One mParticle batch, ready to store and send."""

    batch_id: str
    feed: str
    external_user_id: str
    first_seq: int
    seqs: tuple[int, ...]
    event_ids: tuple[str, ...]
    received_at: float
    body: bytes


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """Batches formed, and events that can never be sent (with the reason)."""

    batches: tuple[PlannedBatch, ...]
    rejected: tuple[tuple[int, str], ...] = ()


def source_request_id(feed: str, first_seq: int, event_ids: Sequence[str]) -> str:
    """A UUID-shaped id derived from the batch's feed, first queue position and event ids:
    stored with the batch, so stable across retries; the queue position keeps it unique even
    when an id comes back after the dedup window."""
    parts = [feed, str(first_seq), *event_ids]
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def _frame(environment: str, batch_id: str, envelope_json: str) -> str:
    # Formatted rather than json.dumps'ed (it runs for every batch): the environment is checked
    # against mParticle's two values and the id is a UUID, so neither needs escaping.
    inner = envelope_json[1:-1]
    return (
        f'{{"schema_version":{SCHEMA_VERSION},"environment":"{environment}",'
        f'"source_request_id":"{batch_id}"' + ("," + inner if inner else "") + ',"events":['
    )


FRAME_ALLOWANCE = 256
"""Bytes kept for the frame around the envelope and events (ids, environment, brackets)."""


def plan_batches(
    events: Sequence[QueuedEvent],
    *,
    environment: str,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> BatchPlan:
    """Cut queued events (any order) into batches per feed and user, in arrival order."""
    by_user: dict[tuple[str, str], list[QueuedEvent]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e.seq):
        by_user[(event.feed, event.external_user_id)].append(event)
    batches: list[PlannedBatch] = []
    rejected: list[tuple[int, str]] = []
    for (feed, user), queued in by_user.items():
        run: list[QueuedEvent] = []
        run_bytes = 0

        def close(run: list[QueuedEvent], feed: str = feed, user: str = user) -> None:
            ids = [e.event_id for e in run]
            batch_id = source_request_id(feed, run[0].seq, ids)
            body = (
                _frame(environment, batch_id, run[0].envelope_json)
                + ",".join(e.event_json for e in run)
                + "]}"
            ).encode("utf-8")
            problems = batch_problems(environment=environment, events=len(run), size=len(body))
            if problems:
                rejected.extend((e.seq, "invalid_batch: " + "; ".join(problems)) for e in run)
                return
            batches.append(
                PlannedBatch(
                    batch_id=batch_id,
                    feed=feed,
                    external_user_id=user,
                    first_seq=run[0].seq,
                    seqs=tuple(e.seq for e in run),
                    event_ids=tuple(ids),
                    received_at=run[0].received_at,
                    body=body,
                )
            )

        for event in queued:
            size = len(event.event_json.encode("utf-8")) + 1
            base = len(event.envelope_json.encode("utf-8")) + FRAME_ALLOWANCE
            if base + size > max_batch_bytes:
                if run:
                    close(run)
                    run, run_bytes = [], 0
                rejected.append((event.seq, "event_too_large"))
                continue
            if run and (
                event.envelope_json != run[0].envelope_json or run_bytes + size > max_batch_bytes
            ):
                close(run)
                run, run_bytes = [], 0
            if not run:
                run_bytes = base
            run.append(event)
            run_bytes += size
        if run:
            close(run)
    batches.sort(key=lambda b: b.first_seq)
    return BatchPlan(batches=tuple(batches), rejected=tuple(rejected))
