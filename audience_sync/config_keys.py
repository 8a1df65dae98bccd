"""The schema of the configuration (SPEC §2): every key with its kind and default, the checks
of their values and ranges, and :class:`Secret`. Loading (file, environment, overrides) is
:mod:`audience_sync.settings`.
"""

from __future__ import annotations

import typing as t

from audience_sync.core import urls
from audience_sync.core.leases import SEND_WITHIN_S


class Secret:
    """A configuration value that must never be printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that needs it (an auth header)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# key -> (kind, default). Kinds: str, int, float, bool, list, secret, secret_list.
FIELDS: dict[str, tuple[str, object]] = {
    "server.host": ("str", "127.0.0.1"),
    "server.port": ("int", 8080),
    "server.threads": ("int", 8),
    "database.url": ("str", "sqlite:///var/audience-sync.db"),
    "database.sqlite_synchronous": ("str", "NORMAL"),
    "firehose.tokens": ("secret_list", []),
    "firehose.max_body_bytes": ("int", 10485760),
    "firehose.suspend_on_auth_failure": ("bool", False),
    "firehose.apply_in_request": ("bool", False),
    "admin.token": ("secret", ""),
    "admin.session_max_age_s": ("float", 43200.0),
    "braze.dry_run": ("bool", False),
    "braze.dry_run_path": ("str", "var/braze-requests.jsonl"),
    "braze.allowed_custom_endpoints": ("list", []),
    "braze.max_objects_per_request": ("int", 75),
    "braze.max_request_bytes": ("int", 4_000_000),
    "braze.requests_per_second": ("float", 1000.0),
    "braze.min_resend_interval_s": ("float", 3.0),
    "braze.array_max_length": ("int", 500),
    "braze.array_write": ("str", "delta"),
    "braze.timeout_s": ("float", 30.0),
    "braze.probe_interval_s": ("float", 60.0),
    "delivery.workers": ("int", 4),
    "delivery.retry_window_s": ("float", 86400.0),
    "delivery.max_attempts": ("int", 12),
    "delivery.coalesce_s": ("float", 0.5),
    "delivery.lease_s": ("float", 120.0),
    "delivery.backoff_base_s": ("float", 2.0),
    "delivery.backoff_cap_s": ("float", 3600.0),
    "delivery.poll_interval_s": ("float", 0.2),
    "delivery.heartbeat_s": ("float", 2.0),
    "delivery.worker_timeout_s": ("float", 10.0),
    "delivery.worker_niceness": ("int", 10),
    "currents.tokens": ("secret_list", []),
    "currents.mparticle_url": ("str", "https://s2s.mparticle.com"),
    "currents.allowed_mparticle_urls": ("list", []),
    "currents.environment": ("str", "production"),
    "currents.identity_key": ("str", "customerid"),
    "currents.retention_s": ("float", 604800.0),
    "currents.dedup_window_s": ("float", 259200.0),
    "currents.watch_dir": ("str", ""),
    "currents.probe_interval_s": ("float", 30.0),
    # Not in SPEC §2's table but needed by §6 (body limit, backlog bound, rate budget).
    "currents.max_body_bytes": ("int", 5_242_880),
    "currents.max_backlog": ("int", 5_000_000),
    "currents.batches_per_second": ("float", 270.0),
    "currents.timeout_s": ("float", 30.0),
    "currents.mapping_path": ("str", ""),
    "log.level": ("str", "INFO"),
    # Scheduled jobs (SPEC §7): jobs.<name>.interval_s and jobs.<name>.enabled per job.
    "jobs.lease_s": ("float", 60.0),
    "jobs.retry_due.enabled": ("bool", True),
    "jobs.retry_due.interval_s": ("float", 10.0),
    "jobs.audit_braze.enabled": ("bool", True),
    "jobs.audit_braze.interval_s": ("float", 1800.0),
    "jobs.audit_braze.users_per_run": ("int", 10000),
    "jobs.audit_braze.settle_s": ("float", 60.0),
    "jobs.cleanup_removed.enabled": ("bool", True),
    "jobs.cleanup_removed.interval_s": ("float", 60.0),
    "jobs.cleanup_removed.users_per_run": ("int", 100000),
    "jobs.currents_watch.enabled": ("bool", True),
    "jobs.currents_watch.interval_s": ("float", 60.0),
    "jobs.currents_expire.enabled": ("bool", True),
    "jobs.currents_expire.interval_s": ("float", 600.0),
    "jobs.prune.enabled": ("bool", True),
    "jobs.prune.interval_s": ("float", 3600.0),
    "jobs.prune.firehose_ids_s": ("float", 604800.0),
    "jobs.prune.counters_s": ("float", 34560000.0),
    "jobs.prune.job_runs_s": ("float", 1209600.0),
    "braze.export_requests_per_minute": ("float", 250.0),
}

FEED_PLATFORMS = ("ios", "android", "web", "unbound")


CONFIDENTIAL_ACCOUNT_KEYS = frozenset({"restApiKey"})


def coerce(key: str, kind: str, raw: object, errors: list[str]) -> object:
    """Turn a TOML value or an environment string into the field's type, or record an error."""
    try:
        if kind in ("str",):
            if not isinstance(raw, str):
                raise TypeError("must be a string")
            return raw
        if kind == "secret":
            if not isinstance(raw, str):
                raise TypeError("must be a string")
            return Secret(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise TypeError("must be an integer")
            if isinstance(raw, str):
                return int(raw.strip())
            if isinstance(raw, int):
                return raw
            raise TypeError("must be an integer")
        if kind == "float":
            if isinstance(raw, bool):
                raise TypeError("must be a number")
            if isinstance(raw, str):
                return float(raw.strip())
            if isinstance(raw, int | float):
                return float(raw)
            raise TypeError("must be a number")
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.strip().lower() in ("false", "0", "no", "off", ""):
                return False
            raise TypeError("must be true or false")
        if kind in ("list", "secret_list"):
            if isinstance(raw, str):
                items = [p.strip() for p in raw.split(",") if p.strip()]
            elif isinstance(raw, list) and all(isinstance(i, str) for i in raw):
                items = list(raw)
            else:
                raise TypeError("must be a list of strings (comma-separated in the environment)")
            if kind == "secret_list":
                return tuple(Secret(i) for i in items)
            return tuple(items)
    except (TypeError, ValueError) as exc:
        message = str(exc) if isinstance(exc, TypeError) else f"must be a {kind}"
        errors.append(f"{key}: {message}")
        return None
    raise AssertionError(f"unknown kind {kind}")


def check_ranges(values: dict[str, t.Any], errors: list[str]) -> None:
    positive = [
        "server.port",
        "server.threads",
        "firehose.max_body_bytes",
        "braze.max_objects_per_request",
        "braze.max_request_bytes",
        "braze.requests_per_second",
        "braze.array_max_length",
        "braze.timeout_s",
        "delivery.workers",
        "delivery.max_attempts",
        "delivery.lease_s",
        "delivery.backoff_base_s",
        "delivery.backoff_cap_s",
        "delivery.poll_interval_s",
        "delivery.heartbeat_s",
        "currents.retention_s",
        "currents.dedup_window_s",
        "currents.probe_interval_s",
        "admin.session_max_age_s",
        "jobs.lease_s",
        "jobs.audit_braze.users_per_run",
        "jobs.cleanup_removed.users_per_run",
        "jobs.prune.firehose_ids_s",
        "jobs.prune.counters_s",
        "jobs.prune.job_runs_s",
        "braze.export_requests_per_minute",
        "currents.max_body_bytes",
        "currents.max_backlog",
        "currents.batches_per_second",
        "currents.timeout_s",
    ]
    positive += [k for k in values if k.startswith("jobs.") and k.endswith(".interval_s")]
    for key in positive:
        value = values.get(key)
        if value is not None and value <= 0:
            errors.append(f"{key}: must be greater than 0")
    for key in (
        "braze.min_resend_interval_s",
        "delivery.retry_window_s",
        "delivery.coalesce_s",
        "jobs.audit_braze.settle_s",
    ):
        value = values.get(key)
        if value is not None and value < 0:
            errors.append(f"{key}: must be 0 or more")
    lease, timeout = values.get("delivery.lease_s"), values.get("braze.timeout_s")
    if lease is not None and timeout is not None and lease <= timeout + SEND_WITHIN_S:
        errors.append(
            f"delivery.lease_s: must be longer than braze.timeout_s + {SEND_WITHIN_S:g} s (a "
            "request goes out within that of its lease's renewal), so a request always ends "
            "before its users can be claimed again"
        )
    beat, silence = values.get("delivery.heartbeat_s"), values.get("delivery.worker_timeout_s")
    if beat is not None and silence is not None and silence < 3 * beat:
        errors.append(
            "delivery.worker_timeout_s: must be at least 3 x delivery.heartbeat_s, so a live "
            "worker that misses a beat is not taken for dead"
        )
    port = values.get("server.port")
    if port is not None and port > 65535:
        errors.append("server.port: must be at most 65535")
    objects = values.get("braze.max_objects_per_request")
    if objects is not None and objects > 75:
        errors.append("braze.max_objects_per_request: Braze accepts at most 75 objects per request")
    if values.get("braze.array_write") not in (None, "delta", "full"):
        errors.append("braze.array_write: must be 'delta' or 'full'")
    level = values.get("log.level")
    if level is not None and level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        errors.append("log.level: must be DEBUG, INFO, WARNING or ERROR")
    sync = values.get("database.sqlite_synchronous")
    if sync is not None and sync.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        errors.append("database.sqlite_synchronous: must be OFF, NORMAL, FULL or EXTRA")
    url = values.get("database.url")
    if url is not None and not (url.startswith("sqlite") or url.startswith("postgresql")):
        errors.append("database.url: must be a sqlite:/// or postgresql+psycopg:// URL")
    if values.get("currents.environment") not in (None, "production", "development"):
        errors.append("currents.environment: must be 'production' or 'development'")
    _check_outbound_urls(values, errors)


def _check_outbound_urls(values: t.Mapping[str, t.Any], errors: list[str]) -> None:
    """Allow-list entries parse as URLs by the rules of the guard that uses them (SSRF), and
    ``currents.mparticle_url`` passes that guard."""
    for key in ("braze.allowed_custom_endpoints", "currents.allowed_mparticle_urls"):
        for index, entry in enumerate(values.get(key) or ()):
            try:
                urls.parse_allowed(entry)
            except urls.UnsafeUrlError as exc:
                # By position: the entry itself may hold userinfo, a password among it.
                errors.append(f"{key}[{index}]: not a usable http(s) base URL: {exc}")
    mp_url = values.get("currents.mparticle_url")
    if mp_url is not None:
        try:
            urls.guard_mparticle_url(mp_url, values.get("currents.allowed_mparticle_urls") or ())
        except urls.UnsafeUrlError as exc:
            errors.append(
                "currents.mparticle_url: must be an https URL under mparticle.com or allowed "
                f"by currents.allowed_mparticle_urls ({exc})"
            )
