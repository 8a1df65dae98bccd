"""Who may read the admin API and the dashboard: the holder of ``admin.token``.

Two ways in, both checked in constant time against the one configured token:

- ``Authorization: Bearer <admin.token>`` (scripts, the API);
- a session cookie set by the dashboard's login form after it received the token. The cookie
  is signed with a key derived from the token (rotating the token logs everyone out), is
  ``Secure``, ``HttpOnly`` and ``SameSite=Strict``, and holds no secret: only "logged in", an
  expiry and a CSRF token that every dashboard form echoes.

With no ``admin.token`` configured nothing gets in: not the API, not the dashboard.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import typing as t
from urllib.parse import urlsplit

from flask import Flask, Response, request, session

from audience_sync import web
from audience_sync.http_errors import error_response
from audience_sync.runtime import current_runtime
from audience_sync.settings import Secret
from audience_sync.telemetry import Action

logger = logging.getLogger(__name__)

SESSION_KEY = "admin"
CSRF_KEY = "csrf"
COOKIE_NAME = "audience_sync_admin"


def _token() -> Secret:
    return t.cast(Secret, current_runtime().settings.get("admin.token"))


def _configured() -> bytes:
    return _token().reveal().encode("utf-8", "surrogateescape")


def token_matches(presented: str) -> bool:
    """``presented`` equals the configured token (never true when none is configured)."""
    return web.token_matches(presented, [_token()])


def bearer_ok() -> bool:
    """The request carries ``Authorization: Bearer <admin.token>``."""
    return web.authorization_matches(
        request.headers.get("Authorization", ""), web.AuthScheme.BEARER, [_token()]
    )


def session_ok() -> bool:
    """The request carries a valid dashboard session (and a token is still configured)."""
    return bool(_configured()) and session.get(SESSION_KEY) is True


def csrf_token() -> str:
    """This session's CSRF token (created at login)."""
    return str(session.get(CSRF_KEY, ""))


def csrf_ok(presented: str | None) -> bool:
    """A form's CSRF field matches the session's; the Origin, if sent, is this site."""
    origin = request.headers.get("Origin")
    # The host only: behind a TLS-terminating proxy the app sees http while the browser says
    # https. "null" (a sandboxed or privacy-stripped origin) is refused.
    if origin is not None and urlsplit(origin).netloc != request.host:
        return False
    expected = csrf_token().encode()
    return bool(expected) & hmac.compare_digest((presented or "").encode(), expected)


def log_in() -> None:
    """Mark the session as the admin's, with a fresh CSRF token."""
    session.clear()
    session.permanent = True
    session[SESSION_KEY] = True
    session[CSRF_KEY] = secrets.token_urlsafe(32)


def unauthorized() -> tuple[Response, int]:
    """The one 401: the same body for a missing, wrong or unconfigured token."""
    response, status = error_response(401, "missing or invalid admin token")
    response.headers["WWW-Authenticate"] = 'Bearer realm="audience-sync admin"'
    return response, status


def init_app(app: Flask, token: Secret, *, session_max_age_s: float) -> None:
    """Configure the signed session cookie; its key is derived from the token."""
    raw = token.reveal().encode("utf-8", "surrogateescape")
    if raw:
        app.secret_key = hmac.new(raw, b"audience-sync admin session", hashlib.sha256).digest()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=session_max_age_s,
    )


def api_guard() -> t.Any:
    """``before_request`` of the API: Bearer token, or the dashboard's session for reads."""
    if bearer_ok():
        return None
    if request.method in ("GET", "HEAD") and session_ok():
        return None
    logger.info(
        "admin request refused",
        extra={"action": Action.ADMIN_UNAUTHORIZED, "method": request.method, "path": request.path},
    )
    return unauthorized()
