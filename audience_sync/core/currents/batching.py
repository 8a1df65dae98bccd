"""Queued events → mParticle batches (SPEC §6.3, §6.4).

A batch holds events of one user for one feed, in arrival order, under 128 KB. Events of a user
are cut into a new batch when the envelope (identities, device info, user attributes) changes or
the size limit is reached, so arrival order per user is kept across batches. A batch's content
is fixed once it is leased (it may be in a request from then on); its ``source_request_id`` is
derived from its feed and event ids, so a retry is the same request to mParticle (which
deduplicates on it). Until then it is *open*: events arriving later for its user are appended
to it (:class:`OpenBatch`), its id derived again, so events arriving close together share a
batch (fewer batches against the 270 batches/s budget).
"""

from __future__ import annotations

import hashlib
import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audience_sync.core.currents.validation import MAX_BATCH_BYTES, batch_problems

SCHEMA_VERSION = 2


@dataclass(slots=True, kw_only=True)
class QueuedEvent:
    """An event waiting in the queue, its parts serialised once at intake.

    ``envelope_json`` is the JSON object of ``user_identities``, ``device_info`` and
    ``user_attributes``; ``event_json`` the JSON of one ``events[]`` entry. Not frozen: one is
    built per event planned, and nothing changes it once built.
    """

    seq: int
    event_id: str
    feed: str
    external_user_id: str
    received_at: float
    envelope_json: str
    event_json: str


@dataclass(frozen=True, kw_only=True)
class OpenBatch:
    """A stored batch never leased yet: its user's latest, so later events may join it."""

    batch_id: str
    feed: str
    external_user_id: str
    first_seq: int
    event_ids: tuple[str, ...]
    received_at: float
    body: bytes


@dataclass(slots=True, kw_only=True)
class PlannedBatch:
    """One mParticle batch, ready to store and send (not frozen: one is built per batch, and
    nothing changes it once built).

    ``seqs`` are the queue positions of the events it takes now; ``event_ids`` all its events,
    with those of the open batch it ``extends`` (replaces, under a new id) first.
    """

    batch_id: str
    feed: str
    external_user_id: str
    first_seq: int
    seqs: tuple[int, ...]
    event_ids: tuple[str, ...]
    received_at: float
    body: bytes
    extends: str | None = None


@dataclass(frozen=True, kw_only=True)
class BatchPlan:
    """Batches formed, and events that can never be sent (with the reason)."""

    batches: tuple[PlannedBatch, ...]
    rejected: tuple[tuple[int, str], ...] = ()


def source_request_id(feed: str, first_seq: int, event_ids: Sequence[str]) -> str:
    """A UUID-shaped id derived from the batch's feed, first queue position and event ids:
    stored with the batch, so stable across retries; the queue position keeps it unique even
    when an id comes back after the dedup window.

    Its first six bytes are the queue position, the other ten a hash of the rest: ids then
    sort in arrival order, so the batches' primary key index grows at its end like the queue
    instead of taking a random page per batch (which SQLite writes to its WAL and copies back
    at every checkpoint).
    """
    parts = [feed, str(first_seq), *event_ids]
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    # str(uuid.UUID(bytes=...)), formatted directly (this runs for every batch).
    h = ((first_seq % 2**48).to_bytes(6, "big") + digest[:10]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _frame(environment: str, batch_id: str, envelope_json: str) -> str:
    # Formatted rather than json.dumps'ed (it runs for every batch): the environment is checked
    # against mParticle's two values and the id is a UUID, so neither needs escaping.
    inner = envelope_json[1:-1]
    return (
        f'{{"schema_version":{SCHEMA_VERSION},"environment":"{environment}",'
        f'"source_request_id":"{batch_id}"' + ("," + inner if inner else "") + ',"events":['
    )


OPEN_BATCH_MAX_BYTES = 64 * 1024
"""An open batch is joined only while its body is under this: joining rewrites the whole body,
so while a feed is paused (nothing leased) each intake costs a heavy user at most this much."""

FRAME_ALLOWANCE = 256
"""Bytes kept for the frame around the envelope and events (ids, environment, brackets)."""


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _open_events(batch: OpenBatch, environment: str, envelope_json: str) -> bytes | None:
    """The events part of an open batch's body, if its envelope is ``envelope_json`` (else
    the batch cannot take events with that envelope)."""
    head = _frame(environment, batch.batch_id, envelope_json).encode("utf-8")
    if not batch.body.startswith(head) or not batch.body.endswith(b"]}"):
        return None
    return batch.body[len(head) : -2]


def plan_batches(
    events: Sequence[QueuedEvent],
    *,
    environment: str,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    open_batches: Mapping[tuple[str, str], OpenBatch] | None = None,
) -> BatchPlan:
    """Cut queued events (any order) into batches per feed and user, in arrival order.

    A user's first events join ``open_batches[(feed, user)]`` (that user's latest stored batch,
    never leased) when their envelope is the same and the size allows: the batch ``extends`` it.
    """
    by_user: dict[tuple[str, str], list[QueuedEvent]] = defaultdict(list)
    for event in sorted(events, key=_SEQ):
        by_user[(event.feed, event.external_user_id)].append(event)
    plan = _Plan(environment)
    opened = open_batches or {}
    for (feed, user), queued in by_user.items():
        run: list[QueuedEvent] = []
        run_bytes = 0
        seed = opened.get((feed, user))
        seed_events: bytes | None = None
        for event in queued:
            # _utf8_len, inlined (this runs for every event planned).
            text = event.event_json
            size = (len(text) if text.isascii() else len(text.encode("utf-8"))) + 1
            text = event.envelope_json
            base = (len(text) if text.isascii() else len(text.encode("utf-8"))) + FRAME_ALLOWANCE
            if base + size > max_batch_bytes:
                if run:
                    plan.close(feed, user, run, seed, seed_events)
                    run, run_bytes = [], 0
                seed, seed_events = None, None
                plan.rejected.append((event.seq, "event_too_large"))
                continue
            if seed is not None and not run:
                # The user's open batch: joined while the envelope is the same and it fits.
                seed_events = _open_events(seed, environment, event.envelope_json)
                if seed_events is not None and len(seed.body) + size <= max_batch_bytes:
                    run_bytes = len(seed.body)
                else:
                    seed, seed_events = None, None
            if run and (
                event.envelope_json != run[0].envelope_json or run_bytes + size > max_batch_bytes
            ):
                plan.close(feed, user, run, seed, seed_events)
                run, run_bytes = [], 0
                seed, seed_events = None, None
            if not run and seed_events is None:
                run_bytes = base
            run.append(event)
            run_bytes += size
        if run:
            plan.close(feed, user, run, seed, seed_events)
    plan.batches.sort(key=_FIRST_SEQ)
    return BatchPlan(batches=tuple(plan.batches), rejected=tuple(plan.rejected))


_SEQ = operator.attrgetter("seq")
_FIRST_SEQ = operator.attrgetter("first_seq")


class _Plan:
    """The batches and rejections of one :func:`plan_batches` call."""

    def __init__(self, environment: str) -> None:
        self.environment = environment
        self.environment_ok = not batch_problems(environment=environment, events=1, size=0)
        self.batches: list[PlannedBatch] = []
        self.rejected: list[tuple[int, str]] = []

    def close(
        self,
        feed: str,
        user: str,
        run: list[QueuedEvent],
        seed: OpenBatch | None,
        seed_events: bytes | None,
    ) -> None:
        """Form one batch of ``run`` (after ``seed_events``, the events of the open batch
        ``seed`` it extends, if any), or reject its events when mParticle would refuse it."""
        environment = self.environment
        new_ids = [e.event_id for e in run]
        if seed is not None and seed_events is not None:
            ids = [*seed.event_ids, *new_ids]
            first_seq, received_at, extends = seed.first_seq, seed.received_at, seed.batch_id
            head = seed_events + b","
        else:
            ids, first_seq, received_at = new_ids, run[0].seq, run[0].received_at
            extends, head = None, b""
        batch_id = source_request_id(feed, first_seq, ids)
        frame = _frame(environment, batch_id, run[0].envelope_json)
        if len(run) == 1:  # the usual case: one text, encoded once
            events_json = run[0].event_json
            seqs: tuple[int, ...] = (run[0].seq,)
        else:
            events_json = ",".join([e.event_json for e in run])
            seqs = tuple([e.seq for e in run])
        if head:
            body = frame.encode("utf-8") + head + (events_json + "]}").encode("utf-8")
        else:
            body = (frame + events_json + "]}").encode("utf-8")
        if not self.environment_ok or len(body) > MAX_BATCH_BYTES or not ids:
            # What mParticle would refuse (ids is never empty here).
            problems = batch_problems(environment=environment, events=len(ids), size=len(body))
            reason = "invalid_batch: " + "; ".join(problems)
            self.rejected.extend((e.seq, reason) for e in run)
            return
        self.batches.append(
            PlannedBatch(
                batch_id=batch_id,
                feed=feed,
                external_user_id=user,
                first_seq=first_seq,
                seqs=seqs,
                event_ids=tuple(ids),
                received_at=received_at,
                body=body,
                extends=extends,
            )
        )
