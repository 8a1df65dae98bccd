"""The one place for Prometheus instruments and the log ``action`` vocabulary (SPEC §8).

A leaf: imports nothing from the package, so any room may call it. Instrumented code makes one
call here (``telemetry.braze_request(...)``) instead of holding instruments itself, so the
series names stay in one list and a refactor moves a call, not a metric.

In-process instruments live here; values that live in the database (backlog, dead letters,
users dirty, feed states) are read at scrape time by the admin's collector, so every process
reports the same truth.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Histogram, disable_created_metrics

# ``*_created`` timestamps double the series count and no dashboard uses them.
disable_created_metrics()


class Action(StrEnum):
    """The fixed vocabulary of ``extra={"action": ...}`` in log records.

    A test checks that every ``"action": "..."`` in the package is one of these: add the word
    here (with the room that logs it) before using it.
    """

    # process lifecycle
    PROCESS_STARTED = "process_started"
    PROCESS_STOPPING = "process_stopping"
    PROCESS_STOPPED = "process_stopped"
    SENDERS_STARTED = "senders_started"
    SENDER_PROCESS_STARTED = "sender_process_started"
    SENDER_PROCESS_DIED = "sender_process_died"
    SENDER_PROCESS_KILLED = "sender_process_killed"
    SENDER_PROCESS_ORPHANED = "sender_process_orphaned"
    APPLIER_PROCESS_STARTED = "applier_process_started"
    APPLIER_PROCESS_DIED = "applier_process_died"
    APPLIER_PROCESS_KILLED = "applier_process_killed"
    APPLIER_PROCESS_ORPHANED = "applier_process_orphaned"
    SQLITE_SINGLE_SENDER = "sqlite_single_sender"
    NICE_FAILED = "nice_failed"
    # worker registry (delivery/heartbeat.py)
    WORKER_REGISTERED = "worker_registered"
    WORKER_REREGISTERED = "worker_reregistered"
    WORKER_REAPED = "worker_reaped"
    WORKER_NOT_ALONE = "worker_not_alone"
    WORKER_UNREGISTER_FAILED = "worker_unregister_failed"
    WORKER_HEARTBEAT_FAILED = "worker_heartbeat_failed"
    WAL_CHECKPOINT_FAILED = "wal_checkpoint_failed"
    DB_RETRY = "db_retry"
    # HTTP
    HTTP_UNHANDLED_ERROR = "http_unhandled_error"
    HTTP_BODY_TOO_LARGE = "http_body_too_large"
    # Firehose intake
    FIREHOSE_ACCEPTED = "firehose_accepted"
    FIREHOSE_APPLY_FAILED = "firehose_apply_failed"
    FIREHOSE_DUPLICATE = "firehose_duplicate"
    FIREHOSE_REJECTED = "firehose_rejected"
    FIREHOSE_RETRY = "firehose_retry"
    CONNECTION_SETTINGS_CHANGED = "connection_settings_changed"
    # Braze delivery
    BRAZE_BATCH_SENT = "braze_batch_sent"
    BRAZE_BUDGET_SHARED = "braze_budget_shared"
    BRAZE_PROBE = "braze_probe"
    BRAZE_RATE_LIMITED = "braze_rate_limited"
    BRAZE_RATE_LIMIT_EXHAUSTED = "braze_rate_limit_exhausted"
    BRAZE_RESUMED = "braze_resumed"
    BRAZE_SUSPENDED = "braze_suspended"
    DELIVERY_GAVE_UP = "delivery_gave_up"
    DELIVERY_ERROR = "delivery_error"
    LEASE_LOST = "lease_lost"
    SENDER_DB_ERROR = "sender_db_error"
    SENDER_ERROR = "sender_error"
    # operator (admin API, dashboard, CLI)
    ADMIN_LOGIN = "admin_login"
    ADMIN_LOGIN_FAILED = "admin_login_failed"
    ADMIN_LOGOUT = "admin_logout"
    ADMIN_UNAUTHORIZED = "admin_unauthorized"
    ADMIN_REPLAY = "admin_replay"
    # Currents round trip (currents/, delivery/currents_*, transport.py)
    CURRENTS_ACCEPTED = "currents_accepted"
    CURRENTS_REJECTED = "currents_rejected"
    CURRENTS_INVALID_EVENT = "currents_invalid_event"
    CURRENTS_FILE_IMPORTED = "currents_file_imported"
    CURRENTS_FILE_FAILED = "currents_file_failed"
    CURRENTS_EXPIRED = "currents_expired"
    CURRENTS_URL_REFUSED = "currents_url_refused"
    CURRENTS_PROBE = "currents_probe"
    CURRENTS_FEED_PAUSED = "currents_feed_paused"
    CURRENTS_FEED_RESUMED = "currents_feed_resumed"
    CURRENTS_BATCH_REFUSED = "currents_batch_refused"
    CURRENTS_REROUTED = "currents_rerouted"
    HTTP_NO_ANSWER = "http_no_answer"
    # scheduled jobs (jobs/)
    SCHEDULER_STARTED = "scheduler_started"
    SCHEDULER_STOPPED = "scheduler_stopped"
    JOB_TICK_ERROR = "job_tick_error"
    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    JOB_SKIPPED = "job_skipped"
    JOB_FAILED = "job_failed"
    JOB_LEASE_LOST = "job_lease_lost"
    JOB_LEASE_ERROR = "job_lease_error"
    AUDIT_SKIPPED = "audit_skipped"
    OLD_WORKSPACE_PAUSED = "old_workspace_paused"
    OLD_WORKSPACE_REFUSED = "old_workspace_refused"


# Latency buckets in seconds: Firehose acknowledgements aim at 50 ms, Braze calls take ~100 ms.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_OBJECT_BUCKETS = (1, 5, 10, 25, 50, 60, 70, 75, 100)

HTTP_REQUESTS = Counter(
    "audience_sync_http_requests",
    "HTTP requests served, by route template and status code.",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "audience_sync_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
MEMBERSHIPS_APPLIED = Counter(
    "audience_sync_memberships_applied",
    "Audience membership changes stored from Firehose messages.",
)
FIREHOSE_MESSAGES = Counter(
    "audience_sync_firehose_messages",
    "Firehose messages accepted, by type (duplicates included, marked).",
    ["type", "duplicate"],
)
BRAZE_REQUESTS = Counter(
    "audience_sync_braze_requests",
    "/users/track requests sent, by classified outcome.",
    ["outcome"],
)
BRAZE_LATENCY = Histogram(
    "audience_sync_braze_request_duration_seconds",
    "Time from sending a /users/track request to its answer.",
    buckets=_LATENCY_BUCKETS,
)
BRAZE_OBJECTS = Histogram(
    "audience_sync_braze_objects_per_request",
    "Attribute objects per /users/track request (Braze allows 75).",
    buckets=_OBJECT_BUCKETS,
)
DATAPOINTS = Counter(
    "audience_sync_braze_datapoints",
    "Braze data points spent by writes Braze accepted.",
)
DATAPOINTS_FULL = Counter(
    "audience_sync_braze_datapoints_full",
    "Data points a resend-everything output would have spent for the same users.",
)
CURRENTS_EVENTS = Counter(
    "audience_sync_currents_events",
    "Braze Currents events, by outcome (forwarded, duplicate, dead_lettered, ...).",
    ["outcome"],
)
JOB_RUNS = Counter(
    "audience_sync_job_runs",
    "Scheduled job runs finished, by job and outcome.",
    ["job", "outcome"],
)
JOB_LATENCY = Histogram(
    "audience_sync_job_duration_seconds",
    "Duration of scheduled job runs.",
    ["job"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)


def http_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request answered (``endpoint``: the route template, never the raw path)."""
    HTTP_REQUESTS.labels(endpoint, method, str(status)).inc()
    HTTP_LATENCY.labels(endpoint).observe(seconds)


def firehose_message(message_type: str, *, duplicate: bool, memberships: int | None) -> None:
    """One Firehose message stored (or recognised as a duplicate)."""
    FIREHOSE_MESSAGES.labels(message_type, "true" if duplicate else "false").inc()
    if memberships:
        MEMBERSHIPS_APPLIED.inc(memberships)


def braze_request(outcome: str, *, objects: int, seconds: float) -> None:
    """One /users/track request answered (or failed) with its classified outcome."""
    BRAZE_REQUESTS.labels(str(outcome).lower()).inc()
    BRAZE_OBJECTS.observe(objects)
    BRAZE_LATENCY.observe(seconds)


def datapoints(spent: int, full: int) -> None:
    """Data points recorded for accepted writes, and what resending everything would cost."""
    if spent:
        DATAPOINTS.inc(spent)
    if full:
        DATAPOINTS_FULL.inc(full)


def currents_events(outcome: str, count: int = 1) -> None:
    """Currents events reaching a final outcome."""
    if count:
        CURRENTS_EVENTS.labels(outcome).inc(count)


def job_run(job: str, outcome: str, seconds: float) -> None:
    """One scheduled job run finished."""
    JOB_RUNS.labels(job, outcome).inc()
    JOB_LATENCY.labels(job).observe(seconds)
