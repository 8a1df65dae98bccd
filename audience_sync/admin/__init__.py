"""The operator's room: admin API (``/api/v1``), dashboard (``/``) and ``/metrics`` (SPEC §8).

Reads the database only through :mod:`audience_sync.store.reads`.
"""

from __future__ import annotations

from flask import Flask

from audience_sync.runtime import Runtime


def init_app(app: Flask, runtime: Runtime) -> None:
    """Register the API with its OpenAPI document, the dashboard and the metrics endpoint."""
    from audience_sync.admin import api, auth, dashboard, metrics

    settings = runtime.settings
    auth.init_app(
        app, settings.get("admin.token"), session_max_age_s=settings.get("admin.session_max_age_s")
    )
    api.init_api(app)
    app.register_blueprint(dashboard.bp)
    metrics.init_app(app, runtime.engine)
