"""WSGI entry point for production servers: ``gunicorn audience_sync.wsgi:app``."""

from __future__ import annotations

from audience_sync import create_app
from audience_sync.logs import configure_logging
from audience_sync.process import tune_gc
from audience_sync.settings import load_settings

_settings = load_settings()
configure_logging(_settings.get("log.level"))
app = create_app(settings=_settings)
tune_gc()
