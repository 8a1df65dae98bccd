"""Process lifecycles for ``run``, ``serve``, ``worker`` and ``scheduler``: start the parts, stop
on SIGTERM.

``run`` sends from a child process (:mod:`audience_sync.sender_process`); ``worker`` sends
from its own threads, and several ``worker`` processes scale delivery on PostgreSQL.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import typing as t

from audience_sync.runtime import Runtime
from audience_sync.settings import Settings

logger = logging.getLogger(__name__)

GC_THRESHOLD = 50_000
"""Generation-0 threshold of CPython's collector in server processes. A 500-profile Firehose
body is ~60,000 short-lived containers: at the default (700) the collector runs ~85 times per
request. Measured with scripts/bench firehose: half the mean latency, most p99 spikes gone."""


def tune_gc() -> None:
    """Freeze the start-up heap out of collections and collect young objects less often."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def create_http_server(app: t.Any, settings: Settings, *, port: int | None = None) -> t.Any:
    """The waitress server of ``run`` and ``serve`` (``port`` overrides ``server.port``)."""
    from waitress import create_server

    from audience_sync.body_limits import BodyLimits, server_body_limit

    return create_server(
        app,
        host=settings.get("server.host"),
        port=settings.get("server.port") if port is None else port,
        threads=settings.get("server.threads"),
        ident="audience-sync",
        # The app answers oversized bodies (JSON 413, after reading them up to a bound);
        # waitress must not refuse them first with a text page and a reset connection.
        max_request_body_size=server_body_limit(BodyLimits.from_settings(settings)),
    )


def _lower_priority(niceness: int) -> None:
    if niceness > 0:
        try:
            os.nice(niceness)
        except OSError:  # not allowed here: run at the inherited priority
            logger.warning("could not lower the worker's priority", extra={"action": "nice_failed"})


def run_all(
    settings: Settings,
    *,
    http: bool,
    senders: bool,
    jobs: bool = False,
    check_schema: t.Callable[[Runtime], None] | None = None,
) -> int:
    """Run the selected parts until SIGTERM/SIGINT; return the exit status."""
    sqlite = settings.get("database.url").startswith("sqlite")
    runtime = Runtime.from_settings(settings, background_checkpoint=sqlite)
    if check_schema is not None:
        check_schema(runtime)
    stop = threading.Event()
    background: list[t.Any] = []
    if sqlite:
        from audience_sync.store.checkpoint import WalCheckpointer
        from audience_sync.store.journal_file import journal_engine

        background.append(WalCheckpointer(runtime.engine, stop).start())
        entries_engine = journal_engine(runtime.engine)
        if entries_engine is not runtime.engine:  # the journal's own file
            background.append(WalCheckpointer(entries_engine, stop).start())
    if senders and http:
        # `run`: the senders get their own process, so delivery and acknowledgements do not
        # share one GIL (audience_sync.sender_process).
        from audience_sync.sender_process import SenderProcess

        background.append(SenderProcess(settings, stop).start())
        background.append(SenderProcess(settings, stop, role="applier").start())
    elif senders:
        from audience_sync.delivery.service import start_senders

        # `worker`: yield the CPU to a `serve` on the same machine, as `run`'s children do.
        _lower_priority(settings.get("delivery.worker_niceness"))

        background.append(start_senders(runtime, stop))
        from audience_sync.delivery.currents_pool import start_currents_senders

        currents_pool = start_currents_senders(runtime, stop)
        if currents_pool is not None:
            background.append(currents_pool)
    if jobs:
        from audience_sync.jobs.scheduler import start_scheduler

        background.append(start_scheduler(runtime, stop))

    server = None
    if http:
        from audience_sync import create_app

        server = create_http_server(create_app(runtime=runtime), settings)
    tune_gc()

    def _shutdown(signum: int, _frame: object) -> None:
        logger.info("stopping", extra={"action": "process_stopping", "signal": signum})
        stop.set()
        if server is not None:
            # waitress's loop serves until every keep-alive channel is gone; SystemExit is its
            # own way out: it stops accepting, lets running requests finish, and returns.
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    logger.info(
        "started",
        extra={
            "action": "process_started",
            "http": bool(server),
            "senders": senders,
            "jobs": jobs,
            "database": runtime.engine.dialect.name,
            "port": settings.get("server.port") if server else None,
        },
    )
    try:
        if server is not None:
            server.run()
        else:
            stop.wait()
    finally:
        stop.set()
        if server is not None:
            server.close()
        for part in background:
            part.join(timeout=30)
        runtime.engine.dispose()
    logger.info("stopped", extra={"action": "process_stopped"})
    return 0
