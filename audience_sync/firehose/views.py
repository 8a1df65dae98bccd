"""``POST /firehose``: mParticle's Firehose messages (SPEC §3).

The view authenticates, validates, hands the message to :mod:`audience_sync.firehose.intake`
(one transaction, durable before the reply) and answers; Braze is never called here.
"""

from __future__ import annotations

import json
import logging
import math
import time
import typing as t
import uuid

import orjson
from flask import Blueprint, Response, jsonify, request

from audience_sync import __version__, telemetry
from audience_sync.errors import InvalidPayloadError
from audience_sync.firehose.intake import (
    IntakeOptions,
    IntakeResult,
    receive_membership_change,
    receive_subscription,
)
from audience_sync.firehose.messages import (
    RESPONSE_TYPE,
    MembershipChangeRequest,
    RegistrationRequest,
    SubscriptionRequest,
)
from audience_sync.firehose.registration import registration_content
from audience_sync.firehose.validation import load_message
from audience_sync.http_errors import error_response
from audience_sync.runtime import current_runtime
from audience_sync.web import AuthScheme, authorization_matches

logger = logging.getLogger(__name__)

bp = Blueprint("firehose", __name__)

DEFAULT_FIREHOSE_VERSION = "3.2.0"


class _InvalidJSON(Exception):
    """The body is not JSON we accept."""


_NOT_JSON = object()


@bp.post("/firehose")
def receive() -> Response | tuple[Response, int]:
    """Dispatch one Firehose message on its ``type`` and answer with its ``…_response``."""
    started = time.perf_counter()
    runtime = current_runtime()
    authorized = authorization_matches(
        request.headers.get("Authorization", ""),
        AuthScheme.TOKEN,
        runtime.settings.get("firehose.tokens"),
    )
    # Within firehose.max_body_bytes: audience_sync.body_limits answered larger ones.
    body = request.get_data(cache=False)
    try:
        data = _decode(body)
    except _InvalidJSON:
        data = _NOT_JSON
    is_registration = isinstance(data, dict) and data.get("type") == "module_registration_request"
    if not authorized and not is_registration:
        return _unauthorized()
    if data is _NOT_JSON:
        _log_rejected(400, "invalid_json")
        raise InvalidPayloadError("request body is not valid JSON", {"_body": ["Invalid JSON."]})
    try:
        message = _load(body, data)
    except InvalidPayloadError as exc:
        _log_rejected(exc.status, "invalid_message", fields=sorted(exc.errors))
        raise

    now = time.time()
    extra: dict[str, t.Any] = {}
    if isinstance(message, RegistrationRequest):
        content = registration_content(__version__)
    else:
        options = IntakeOptions.from_settings(runtime.settings)
        result: IntakeResult
        if isinstance(message, SubscriptionRequest):
            result = receive_subscription(runtime.engine, message, options, now=now)
            content = {}
            extra = {"audience_id": message.audience_id, "subscription_action": message.action}
        else:
            assert isinstance(message, MembershipChangeRequest)
            result = receive_membership_change(runtime.engine, message, options, now=now)
            content = {"suspend_subscription": result.suspend_subscription}
            extra = {
                "profiles": len(message.user_profiles),
                "users": result.users,
                "memberships": result.memberships,
                "suspend_subscription": result.suspend_subscription,
            }
        extra.update(
            account_id=message.account.account_id,
            duplicate=result.duplicate,
            connection_state=result.connection_state,
            enqueued=result.enqueued,
        )
    logger.info(
        "firehose %s accepted",
        message.type,
        extra={
            "action": "firehose_duplicate" if extra.get("duplicate") else "firehose_accepted",
            "message_type": message.type,
            "ms": round((time.perf_counter() - started) * 1000, 2),
            **extra,
        },
    )
    telemetry.firehose_message(
        message.type, duplicate=bool(extra.get("duplicate")), memberships=extra.get("memberships")
    )
    return jsonify(
        {
            "type": RESPONSE_TYPE[message.type],
            "id": str(uuid.uuid4()),
            "timestamp_ms": int(now * 1000),
            "firehose_version": message.firehose_version or DEFAULT_FIREHOSE_VERSION,
            **content,
        }
    )


def _reject_constant(name: str) -> t.NoReturn:
    raise _InvalidJSON(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _InvalidJSON(text)
    return value


def _load(body: bytes, data: object) -> t.Any:
    """Validate the message; a body that fails is parsed again exactly before the verdict (an
    mpid beyond 64 bits is text to the schema, not a float)."""
    try:
        return load_message(data)
    except InvalidPayloadError as first:
        try:
            exact = _decode_exactly(body)
        except _InvalidJSON:
            raise first from None
        return load_message(exact)


def _decode(body: bytes) -> object:
    """Strict JSON: no NaN or Infinity (PostgreSQL's JSONB refuses them), UTF-8/16/32.

    orjson parses the usual body twice as fast as the standard library; what it refuses (UTF-16/32,
    a BOM, a lone surrogate escape, or invalid JSON) is decided by the standard library."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _decode_exactly(body)


def _decode_exactly(body: bytes) -> object:
    """The standard library's parse, which keeps integers beyond 64 bits exact (orjson makes
    them floats): the judge of every body that fails validation."""
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _InvalidJSON from exc


def _unauthorized() -> tuple[Response, int]:
    _log_rejected(401, "unauthorized")
    response, status = error_response(401, "missing or invalid Firehose token")
    response.headers["WWW-Authenticate"] = "Token"
    return response, status


def _log_rejected(status: int, reason: str, **extra: t.Any) -> None:
    logger.info(
        "firehose request rejected: %s",
        reason,
        extra={"action": "firehose_rejected", "status": status, "reason": reason, **extra},
    )
