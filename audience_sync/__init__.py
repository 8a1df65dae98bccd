"""audience-sync: mParticle audiences to Braze attributes, Braze Currents back to mParticle."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    # Imported where used: every command imports this package, and Flask and the engine's
    # modules cost the CLI ~0.3 s of start-up (``currents import`` needs neither Flask).
    from flask import Flask

    from audience_sync.runtime import Runtime
    from audience_sync.settings import Settings

__version__ = "0.1.0"


def create_app(
    test_config: t.Mapping[str, t.Any] | None = None,
    *,
    settings: Settings | None = None,
    runtime: Runtime | None = None,
) -> Flask:
    """Build the WSGI application: defaults -> config file -> environment -> ``test_config``.

    The scheduler and the senders are never started here (SPEC §1, STYLE §8.5): ``run``,
    ``worker`` and ``scheduler`` start them beside the app.
    """
    from flask import Flask

    from audience_sync import admin, body_limits, health, http_errors
    from audience_sync.currents.views import bp as currents_bp
    from audience_sync.firehose.views import bp as firehose_bp
    from audience_sync.runtime import Runtime
    from audience_sync.settings import load_settings

    if runtime is None:
        settings = settings or load_settings(overrides=test_config)
        runtime = Runtime.from_settings(settings)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["audience_sync"] = runtime
    http_errors.init_app(app)
    body_limits.init_app(app, body_limits.BodyLimits.from_settings(runtime.settings))
    app.register_blueprint(health.bp)
    app.register_blueprint(firehose_bp)
    admin.init_app(app, runtime)
    app.register_blueprint(currents_bp)
    return app
