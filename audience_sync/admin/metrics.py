"""``/metrics`` in Prometheus text format (SPEC §8).

Two kinds of series:

- in-process instruments of :mod:`audience_sync.telemetry` (requests, Braze calls, latencies),
  fed by request hooks registered here and by one-line calls in the senders and intake;
- a collector that reads, at scrape time, what lives in the database (backlog, dead letters,
  users dirty, suspended workspaces, feed states) with a few aggregate queries, so every
  process of a deployment reports the same truth for them.

Under a pre-forking server (``gunicorn -w N``) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory: the in-process series of every worker are then summed from it (prometheus-client's
multiprocess mode), and any worker answers for all.

``/metrics`` is open like ``/healthz`` (Prometheus scrapes without credentials) and holds no
secret: no label carries a key, token, user id or URL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from audience_sync import telemetry
from audience_sync.store import activity, reads
from audience_sync.store.engine import read_only

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

FEED_STATES = ("active", "paused", "probing", "dead")


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time (one engine per process)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the backlog, failures and feeds now; nothing if the database is down."""
        now = time.time()
        up = GaugeMetricFamily(
            "audience_sync_database_up", "1 if the database answered this scrape."
        )
        try:
            with read_only(self.engine) as conn:
                summary = activity.gauges(conn, now=now)
                feeds = reads.feed_states(conn)
        except sa.exc.SQLAlchemyError as exc:
            logger.debug("metrics: database unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        backlog = summary.backlog
        users = GaugeMetricFamily(
            "audience_sync_outbox_users",
            "Braze users in the outbox by state (pending = users dirty, dead = dead letters).",
            labels=["state"],
        )
        users.add_metric(["pending"], backlog.pending)
        users.add_metric(["dead"], backlog.dead)
        users.add_metric(["in_flight"], backlog.in_flight)
        yield users
        yield GaugeMetricFamily(
            "audience_sync_users_dirty",
            "Braze users whose desired state is not yet acknowledged.",
            value=backlog.pending,
        )
        yield GaugeMetricFamily(
            "audience_sync_dead_letters", "Braze users given up on.", value=backlog.dead
        )
        yield GaugeMetricFamily(
            "audience_sync_firehose_waiting_messages",
            "Firehose messages accepted and not yet applied to the membership state.",
            value=backlog.firehose_waiting,
        )
        age = now - backlog.oldest_pending_at if backlog.oldest_pending_at is not None else 0.0
        yield GaugeMetricFamily(
            "audience_sync_backlog_oldest_age_seconds",
            "Age of the oldest pending user (0 when none).",
            value=max(age, 0.0),
        )
        yield GaugeMetricFamily(
            "audience_sync_workspaces_suspended",
            "Braze workspaces suspended after their key or URL was refused.",
            value=summary.workspaces_suspended,
        )
        conns = GaugeMetricFamily(
            "audience_sync_connections", "mParticle connections by state.", labels=["state"]
        )
        for state, n in sorted(summary.connections.items()):
            conns.add_metric([state], n)
        yield conns
        state = GaugeMetricFamily(
            "audience_sync_currents_feed_state",
            "1 for the current state of each Currents feed.",
            labels=["feed", "state"],
        )
        backlog_feed = GaugeMetricFamily(
            "audience_sync_currents_feed_backlog",
            "Currents events waiting per feed.",
            labels=["feed"],
        )
        for feed in feeds:
            for name in sorted({*FEED_STATES, feed.state}):
                state.add_metric([feed.name, name], 1 if name == feed.state else 0)
            backlog_feed.add_metric([feed.name], feed.backlog)
        yield state
        yield backlog_feed


_collectors: dict[int, DatabaseCollector] = {}


def register_collector(engine: sa.Engine) -> None:
    """Register the database collector once per engine (tests build many apps)."""
    for key, collector in list(_collectors.items()):
        if collector.engine is not engine:
            REGISTRY.unregister(collector)
            del _collectors[key]
    if id(engine) not in _collectors:
        collector = DatabaseCollector(engine)
        REGISTRY.register(collector)
        _collectors[id(engine)] = collector


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@bp.get("/metrics")
def metrics() -> Response:
    """Every series in Prometheus text format."""
    if os.environ.get(MULTIPROC_ENV):
        # Every worker's in-process series from the shared directory, plus the database's.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        for collector in _collectors.values():
            registry.register(collector)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _finished(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        telemetry.http_request(
            rule, request.method, response.status_code, time.perf_counter() - started
        )
    return response


def init_app(app: Flask, engine: sa.Engine) -> None:
    """Count every request by route and status; serve ``/metrics``."""
    app.before_request(_started)
    app.after_request(_finished)
    app.register_blueprint(bp)
    register_collector(engine)
