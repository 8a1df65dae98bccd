"""``POST /currents``: Braze's Custom HTTP Currents connector (SPEC §6.1).

The Bearer token is checked first (constant time, even for an empty batch); then the body limit
(413), the backlog bound (429 with Retry-After), and the batch's shape: only a body that is not
JSON, not an object or has no ``events`` list is a 400 (Braze then splits the batch). A bad single
event is skipped and counted ``invalid_event``. Everything accepted is committed before the 2xx.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections import Counter

import orjson
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request

from audience_sync.core.currents.events import InvalidEventError, from_http
from audience_sync.core.currents.mapping import Skip
from audience_sync.currents.service import CurrentsConfig, prepare, store_events
from audience_sync.errors import InvalidPayloadError
from audience_sync.http_errors import error_response
from audience_sync.runtime import current_runtime
from audience_sync.store import currents as queue
from audience_sync.store.engine import read_only
from audience_sync.store.transactions import in_transaction
from audience_sync.web import AuthScheme, authorization_matches

logger = logging.getLogger(__name__)

bp = Blueprint("currents", __name__)

BACKLOG_CHECK_INTERVAL_S = 1.0
"""How long a backlog count is reused (counting every request would cost more than intake)."""
RETRY_AFTER_BACKLOG_S = 30
RETRY_AFTER_UNAVAILABLE_S = 5


class _BacklogGauge:
    """The queue's backlog, counted at most once per ``BACKLOG_CHECK_INTERVAL_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0
        self._at = -1e18

    def value(self, engine: sa.Engine, now: float) -> int:
        with self._lock:
            if now - self._at < BACKLOG_CHECK_INTERVAL_S:
                return self._value
            self._at = now
        with read_only(engine) as conn:
            value = queue.backlog(conn)
        with self._lock:
            self._value = value
        return value


def _state() -> tuple[CurrentsConfig, _BacklogGauge]:
    ext = current_app.extensions
    if "audience_sync.currents" not in ext:
        ext["audience_sync.currents"] = (
            CurrentsConfig.from_settings(current_runtime().settings),
            _BacklogGauge(),
        )
    return ext["audience_sync.currents"]


def _read_body(limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (announced or actual)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = request.stream.read(limit + 1)
    return None if len(body) > limit else body


@bp.post("/currents")
def receive() -> Response | tuple[Response, int]:
    """Accept one Custom HTTP batch ``{"events": [...]}``."""
    started = time.perf_counter()
    runtime = current_runtime()
    settings = runtime.settings
    if not authorization_matches(
        request.headers.get("Authorization", ""), AuthScheme.BEARER, settings.get("currents.tokens")
    ):
        _log_rejected(401, "unauthorized")
        response, status = error_response(401, "missing or invalid Currents token")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response, status
    limit = settings.get("currents.max_body_bytes")
    body = _read_body(limit)
    if body is None:
        _log_rejected(413, "too_large")
        return error_response(413, f"request body too large (limit {limit} bytes)")
    config, gauge = _state()
    now = time.time()
    try:
        backlog = gauge.value(runtime.engine, now)
    except sa.exc.OperationalError:
        return _unavailable()
    if backlog >= settings.get("currents.max_backlog"):
        _log_rejected(429, "backlog_full", backlog=backlog)
        response, status = error_response(429, "the Currents backlog is full; retry later")
        response.headers["Retry-After"] = str(RETRY_AFTER_BACKLOG_S)
        return response, status

    raw_events = _load_batch(body)
    events = []
    skipped: Counter[str] = Counter()
    for raw in raw_events:
        try:
            events.append(from_http(raw))
        except InvalidEventError:
            skipped[Skip.INVALID_EVENT] += 1
    ready, skipped_mapping = prepare(events, config)
    skipped.update(skipped_mapping)
    try:
        result = in_transaction(
            runtime.engine,
            lambda conn: store_events(
                conn,
                ready,
                Counter(skipped),
                received=len(raw_events),
                config=config,
                now=now,
            ),
            action="currents_intake",
        )
    except sa.exc.OperationalError:
        return _unavailable()
    logger.info(
        "currents batch accepted",
        extra={
            "action": "currents_accepted",
            "received": result.received,
            "queued": result.queued,
            "held": result.held,
            "skipped": result.skipped,
            "ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return jsonify(
        {
            "received": result.received,
            "queued": result.queued,
            "held": result.held,
            "skipped": result.skipped,
        }
    )


def _load_batch(body: bytes) -> list[t.Any]:
    """The ``events`` list of a batch; a malformed batch is a 400 naming the field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        _log_rejected(400, "invalid_json")
        raise InvalidPayloadError(
            "request body is not valid JSON", {"_body": ["Invalid JSON."]}
        ) from None
    if not isinstance(data, dict):
        _log_rejected(400, "not_an_object")
        raise InvalidPayloadError(
            "request body must be a JSON object", {"_body": ["Must be an object."]}
        )
    events = data.get("events")
    if not isinstance(events, list):
        _log_rejected(400, "no_events_list")
        raise InvalidPayloadError(
            "the batch has no events list", {"events": ["Must be a list of events."]}
        )
    return events


def _unavailable() -> tuple[Response, int]:
    _log_rejected(503, "database_unavailable")
    response, status = error_response(503, "the database is unavailable; retry later")
    response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE_S)
    return response, status


def _log_rejected(status: int, reason: str, **extra: t.Any) -> None:
    logger.info(
        "currents request rejected: %s",
        reason,
        extra={"action": "currents_rejected", "status": status, "reason": reason, **extra},
    )
