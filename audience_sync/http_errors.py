"""One JSON error shape for every 4xx/5xx: ``{"code", "status", "message", "errors"}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

from audience_sync.errors import InvalidPayloadError

logger = logging.getLogger(__name__)


def error_response(
    code: int, message: str, errors: dict[str, object] | None = None
) -> tuple[Response, int]:
    """Build the error body; ``status`` is the HTTP reason phrase."""
    from http import HTTPStatus

    body = {
        "code": code,
        "status": HTTPStatus(code).phrase,
        "message": message,
        "errors": errors or {},
    }
    return jsonify(body), code


def _handle_http(exc: HTTPException) -> tuple[Response, int]:
    code = exc.code or 500
    message = exc.description or HTTPException.description or ""
    if code == 413:
        message = "request body too large"
    # webargs (flask-smorest) attaches the field errors of a rejected query or body here.
    data = getattr(exc, "data", None)
    errors = data.get("messages") if isinstance(data, dict) else None
    return error_response(code, message, errors if isinstance(errors, dict) else None)


def _handle_invalid(exc: InvalidPayloadError) -> tuple[Response, int]:
    return error_response(exc.status, exc.message, exc.errors)


def _handle_unexpected(exc: Exception) -> tuple[Response, int]:
    logger.error("unhandled error", exc_info=exc, extra={"action": "http_unhandled_error"})
    return error_response(500, InternalServerError.description or "internal error")


def init_app(app: Flask) -> None:
    """Register the handlers so 400/404/405/413/500 all come out in the same shape."""
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(InvalidPayloadError, _handle_invalid)
    app.register_error_handler(Exception, _handle_unexpected)
