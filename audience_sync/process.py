"""Process lifecycles for ``run``, ``serve`` and ``worker``: start the parts, stop on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import typing as t

from audience_sync.runtime import Runtime
from audience_sync.settings import Settings

logger = logging.getLogger(__name__)


def run_all(
    settings: Settings,
    *,
    http: bool,
    senders: bool,
    check_schema: t.Callable[[Runtime], None] | None = None,
) -> int:
    """Run the selected parts until SIGTERM/SIGINT; return the exit status."""
    runtime = Runtime.from_settings(settings)
    if check_schema is not None:
        check_schema(runtime)
    stop = threading.Event()
    background: list[t.Any] = []
    if senders:
        from audience_sync.delivery.service import start_senders

        background.append(start_senders(runtime, stop))

    server = None
    if http:
        from waitress import create_server

        from audience_sync import create_app

        app = create_app(runtime=runtime)
        server = create_server(
            app,
            host=settings.get("server.host"),
            port=settings.get("server.port"),
            threads=settings.get("server.threads"),
            ident="audience-sync",
        )

    def _shutdown(signum: int, _frame: object) -> None:
        logger.info("stopping", extra={"action": "process_stopping", "signal": signum})
        stop.set()
        if server is not None:
            server.close()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    logger.info(
        "started",
        extra={
            "action": "process_started",
            "http": bool(server),
            "senders": senders,
            "database": runtime.engine.dialect.name,
            "port": settings.get("server.port") if server else None,
        },
    )
    try:
        if server is not None:
            server.run()
        else:
            stop.wait()
    except OSError:
        if not stop.is_set():
            raise
    finally:
        stop.set()
        for part in background:
            part.join(timeout=30)
        runtime.engine.dispose()
    return 0
