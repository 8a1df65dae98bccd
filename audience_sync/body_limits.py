"""Request body limits, enforced by the app for every endpoint (SPEC §3.1: larger bodies get 413).

The limit is on *larger* bodies: a body of exactly the limit is accepted. An oversized request
gets the one JSON error shape, and its body is read and thrown away up to
:data:`DRAIN_FACTOR` times the limit first: a client that writes its whole request before it
reads the reply (mParticle's does) would otherwise see its connection reset, take that for a
transient failure, and retry the same request forever. Beyond that bound the rest is not read,
and closing the connection is the WSGI server's business (an application may not send the
hop-by-hop ``Connection`` header, PEP 3333).

The WSGI server must not answer first: :func:`server_body_limit` is what ``run``/``serve`` give
waitress as ``max_request_body_size``. waitress reads a whole body before calling the app, so
up to that limit every oversized request gets the JSON 413 on a connection that stays usable;
beyond it waitress refuses and closes the connection itself.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from flask import Flask, Response, request

from audience_sync.http_errors import error_response
from audience_sync.settings import Settings

logger = logging.getLogger(__name__)

DRAIN_FACTOR = 4
"""An oversized body is read and discarded up to this multiple of its limit, no further."""
READ_CHUNK_BYTES = 64 * 1024
"""Bytes read from the input stream at a time while draining."""


@dataclass(frozen=True, kw_only=True)
class BodyLimits:
    """The largest accepted body in bytes, per path prefix (longest prefix wins)."""

    default: int
    by_prefix: Mapping[str, int] = field(default_factory=dict)

    def limit_for(self, path: str) -> int:
        """The limit that applies to ``path``."""
        best = ""
        for prefix in self.by_prefix:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.by_prefix[best] if best else self.default

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        """``firehose.max_body_bytes`` for every path (an endpoint with a limit of its own adds
        its prefix here)."""
        return cls(default=settings.get("firehose.max_body_bytes"))

    @property
    def largest(self) -> int:
        """The largest limit of any path."""
        return max([self.default, *self.by_prefix.values()])


def drain_bound(limit: int) -> int:
    """How many bytes of an oversized body are read (and discarded); the rest is left to the
    WSGI server."""
    return DRAIN_FACTOR * limit


def server_body_limit(limits: BodyLimits) -> int:
    """The WSGI server's own limit (waitress ``max_request_body_size``): above every drain bound,
    so the server never answers before the app. waitress counts the framing of a chunked body
    too and refuses at ``>=``, hence the margin."""
    bound = drain_bound(limits.largest)
    return bound + bound // 4 + 1


def init_app(app: Flask, limits: BodyLimits) -> None:
    """Check every request's body against ``limits`` before it is routed."""

    def enforce() -> tuple[Response, int] | None:
        return _enforce(limits.limit_for(request.path))

    app.before_request(enforce)


def _enforce(limit: int) -> tuple[Response, int] | None:
    environ = request.environ
    stream = environ["wsgi.input"]
    raw_length = environ.get("CONTENT_LENGTH") or ""
    if raw_length.strip():
        try:
            length = int(raw_length)
        except ValueError:
            return None  # werkzeug answers a bad Content-Length with 400
        if length <= limit:
            return None
        if length > drain_bound(limit):
            return _too_large(limit, complete=False)
        return _too_large(limit, complete=_discard(stream, length) >= length)
    if not environ.get("wsgi.input_terminated"):
        return None  # no Content-Length and no de-chunked stream: no body
    # A de-chunked body of unknown length: read it here, so the view sees an ordinary one.
    body = _read_up_to(stream, limit + 1)
    if len(body) <= limit:
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        return None
    drained = len(body) + _discard(stream, drain_bound(limit) - len(body))
    complete = drained < drain_bound(limit) or not stream.read(1)
    return _too_large(limit, complete=complete)


def _read_up_to(stream: io.RawIOBase, size: int) -> bytes:
    chunks = []
    left = size
    while left > 0:
        chunk = stream.read(min(READ_CHUNK_BYTES, left))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _discard(stream: io.RawIOBase, size: int) -> int:
    """Read and drop up to ``size`` bytes; return how many were read."""
    read = 0
    while read < size:
        chunk = stream.read(min(READ_CHUNK_BYTES, size - read))
        if not chunk:
            break
        read += len(chunk)
    return read


def _too_large(limit: int, *, complete: bool) -> tuple[Response, int]:
    logger.info(
        "request body too large",
        extra={
            "action": "http_body_too_large",
            "path": request.path,
            "limit": limit,
            "drained": complete,
        },
    )
    response, status = error_response(
        413, "request body too large", {"_body": [f"Longer than {limit} bytes."]}
    )
    return response, status
