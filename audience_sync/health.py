"""``/healthz`` (the process is up) and ``/readyz`` (database reachable, schema current)."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify

from audience_sync.runtime import current_runtime
from audience_sync.store.migrate import is_current

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: answers as long as the process serves requests."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the database answers and every migration is applied."""
    engine = current_runtime().engine
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        current = is_current(engine)
    except sa.exc.SQLAlchemyError as exc:
        return jsonify({"status": "unavailable", "reason": type(exc).__name__}), 503
    if not current:
        return jsonify({"status": "unavailable", "reason": "migrations_pending"}), 503
    return jsonify({"status": "ok"}), 200
