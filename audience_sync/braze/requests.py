"""Pack attribute objects into ``POST /users/track`` bodies (pure, no I/O).

Each object is encoded to compact UTF-8 JSON exactly once; requests are filled up to
``max_objects`` objects and strictly under ``max_bytes`` bytes (Braze answers 413 at 4 MB),
preserving the callers' order, so that under load every request but the last is full
(SPEC §5.2).
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

MAX_OBJECTS_DEFAULT = 75
"""Objects per ``/users/track`` request (combined across attributes/events/purchases)."""

MAX_BYTES_DEFAULT = 4_000_000
"""Bytes per request body; a body must be strictly smaller (Braze rejects 4 MB and more)."""

_PREFIX = b'{"attributes":['
_SUFFIX = b"]}"
_ENVELOPE = len(_PREFIX) + len(_SUFFIX)


@dataclass(frozen=True, kw_only=True)
class PreparedRequest:
    """One ready ``/users/track`` body and which input objects it carries.

    Attributes:
        body: ``b'{"attributes":[...]}'``, compact JSON, UTF-8.
        indices: positions in the ``objects`` given to :func:`build_requests`, in body order;
            ``indices[i]`` is the object Braze calls ``{"input_array": "attributes", "index": i}``.
    """

    body: bytes
    indices: tuple[int, ...]

    @property
    def count(self) -> int:
        """Number of objects in the body."""
        return len(self.indices)


class ObjectTooLargeError(ValueError):
    """One object alone does not fit in a request; the caller dead-letters it.

    Attributes:
        index: its position in ``objects``.
        size: bytes of the smallest body that would carry it.
    """

    def __init__(self, index: int, size: int, max_bytes: int) -> None:
        self.index = index
        self.size = size
        self.max_bytes = max_bytes
        super().__init__(
            f"object at index {index} needs a {size}-byte request, "
            f"which is not under the {max_bytes}-byte limit"
        )


def encode_object(obj: Mapping[str, t.Any]) -> bytes:
    """Encode one attribute object as compact UTF-8 JSON (the form it takes in a body)."""
    return orjson.dumps(obj)


def build_requests(
    objects: Sequence[Mapping[str, t.Any]],
    *,
    max_objects: int = MAX_OBJECTS_DEFAULT,
    max_bytes: int = MAX_BYTES_DEFAULT,
) -> list[PreparedRequest]:
    """Pack ``objects`` in order into as few requests as the limits allow.

    Args:
        objects: attribute objects, one per user (each with its ``external_id``).
        max_objects: most objects in one request (``braze.max_objects_per_request``).
        max_bytes: every body is strictly smaller than this (``braze.max_request_bytes``).

    Returns:
        Requests in order; concatenating their ``indices`` gives ``0 .. len(objects) - 1``.

    Raises:
        ObjectTooLargeError: (a ``ValueError``) an object that alone reaches ``max_bytes``;
            its ``index`` names it. Nothing is returned for the other objects: drop that one
            and call again.
        ValueError: ``max_objects`` below 1, or ``max_bytes`` too small for any body.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects must be at least 1, got {max_objects}")
    if max_bytes <= _ENVELOPE:
        raise ValueError(f"max_bytes must be greater than {_ENVELOPE}, got {max_bytes}")

    requests: list[PreparedRequest] = []
    parts: list[bytes] = []
    indices: list[int] = []
    size = _ENVELOPE  # bytes of the body built from ``parts`` so far

    def flush() -> None:
        requests.append(
            PreparedRequest(body=_PREFIX + b",".join(parts) + _SUFFIX, indices=tuple(indices))
        )

    for index, obj in enumerate(objects):
        encoded = encode_object(obj)
        alone = _ENVELOPE + len(encoded)
        if alone >= max_bytes:
            raise ObjectTooLargeError(index, alone, max_bytes)
        # One comma separates this object from the previous one, if any.
        grown = size + len(encoded) + (1 if parts else 0)
        if parts and (len(parts) >= max_objects or grown >= max_bytes):
            flush()
            parts, indices = [], []
            grown = alone
        parts.append(encoded)
        indices.append(index)
        size = grown
    if parts:
        flush()
    return requests
