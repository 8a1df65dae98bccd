"""Pack mParticle batches into ``/v2/bulkevents`` requests (SPEC §6.4): at most 100 batches
and under 256 KB per request. Batches come serialised (bytes), so a request body is a join."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_BATCHES_PER_REQUEST = 100
MAX_REQUEST_BYTES = 256 * 1024 - 1


@dataclass(frozen=True, kw_only=True)
class BulkRequest:
    """One request: the ids of its batches (in order) and its body, a JSON array."""

    batch_ids: tuple[str, ...]
    body: bytes


def pack(
    batches: Sequence[tuple[str, bytes]],
    *,
    max_batches: int = MAX_BATCHES_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> list[BulkRequest]:
    """Cut ``(batch_id, body)`` pairs, in order, into full requests.

    Raises:
        ValueError: a single batch larger than ``max_bytes`` (batches are cut under 128 KB).
    """
    requests: list[BulkRequest] = []
    ids: list[str] = []
    bodies: list[bytes] = []
    size = 2  # the brackets
    for batch_id, body in batches:
        extra = len(body) + (1 if bodies else 0)
        if len(body) + 2 > max_bytes:
            raise ValueError(f"batch {batch_id} is {len(body)} bytes, over the request limit")
        if bodies and (len(bodies) >= max_batches or size + extra > max_bytes):
            requests.append(BulkRequest(batch_ids=tuple(ids), body=b"[" + b",".join(bodies) + b"]"))
            ids, bodies, size = [], [], 2
            extra = len(body)
        ids.append(batch_id)
        bodies.append(body)
        size += extra
    if bodies:
        requests.append(BulkRequest(batch_ids=tuple(ids), body=b"[" + b",".join(bodies) + b"]"))
    return requests
