"""Load and validate the configuration (SPEC §2).

Order of precedence, lowest first: built-in defaults (mirrored in ``config/default.toml``), the TOML
file (``--config PATH`` or ``AUDIENCE_SYNC_CONFIG``), ``AUDIENCE_SYNC_<SECTION>__<KEY>``
environment variables, then test overrides. Every problem is collected and raised at once as one
:class:`ConfigValidationError`. Secret values are wrapped in :class:`Secret`, whose ``repr`` and
``str`` never show the value.
"""

from __future__ import annotations

import os
import tomllib
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from audience_sync.errors import ConfigValidationError

ENV_PREFIX = "AUDIENCE_SYNC_"
CONFIG_ENV = "AUDIENCE_SYNC_CONFIG"


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
    "admin.token": ("secret", ""),
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
}

FEED_PLATFORMS = ("ios", "android", "web", "unbound")


@dataclass(frozen=True, kw_only=True)
class FeedSettings:
    """One mParticle input feed that Currents events are forwarded to."""

    name: str
    key: Secret
    secret: Secret
    platform: str
    app_ids: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    """The validated configuration. Read with ``settings.get("braze.array_write")`` or the
    typed attributes below; connection overrides are raw strings, as mParticle sends them."""

    values: Mapping[str, t.Any]
    feeds: tuple[FeedSettings, ...] = ()
    connections: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = "defaults"

    def get(self, key: str) -> t.Any:
        """Return the validated value of a dotted key."""
        return self.values[key]

    def connection_overrides(self, account_id: int | str) -> Mapping[str, str]:
        """Local overrides of one connection's account settings (SPEC §2 ``connections.*``)."""
        return self.connections.get(str(account_id), MappingProxyType({}))

    def __repr__(self) -> str:
        return f"Settings(source={self.source!r}, values={self.redacted()!r})"

    def redacted(self) -> dict[str, object]:
        """A printable view: secrets shown as ``***``, database password masked."""
        out: dict[str, object] = {}
        for key, value in self.values.items():
            if key == "database.url":
                out[key] = _mask_url_password(value)
            elif isinstance(value, Secret):
                out[key] = "***" if value.reveal() else ""
            elif isinstance(value, tuple) and value and isinstance(value[0], Secret):
                out[key] = ["***"] * len(value)
            else:
                out[key] = list(value) if isinstance(value, tuple) else value
        for feed in self.feeds:
            out[f"currents.feeds.{feed.name}"] = {
                "platform": feed.platform,
                "app_ids": list(feed.app_ids),
                "key": "***",
                "secret": "***",
            }
        for account, overrides in self.connections.items():
            out[f"connections.{account}"] = {
                k: ("***" if k in CONFIDENTIAL_ACCOUNT_KEYS else v) for k, v in overrides.items()
            }
        return out


CONFIDENTIAL_ACCOUNT_KEYS = frozenset({"restApiKey"})


def _mask_url_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "***"


def _flatten(data: Mapping[str, t.Any], prefix: str = "") -> dict[str, t.Any]:
    out: dict[str, t.Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``AUDIENCE_SYNC_BRAZE__DRY_RUN=true`` -> ``{"braze.dry_run": "true"}``."""
    out: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or "__" not in name:
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        # Section and field names are lower case; connection and feed names keep their case
        # except the first two levels.
        dotted = [p.lower() for p in parts[:2]] + [
            p if parts[0].lower() == "connections" else p.lower() for p in parts[2:]
        ]
        out[".".join(dotted)] = value
    return out


def _coerce(key: str, kind: str, raw: object, errors: list[str]) -> object:
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


def _check_ranges(values: dict[str, t.Any], errors: list[str]) -> None:
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
        "currents.retention_s",
        "currents.dedup_window_s",
        "currents.probe_interval_s",
        "currents.max_body_bytes",
        "currents.max_backlog",
        "currents.batches_per_second",
        "currents.timeout_s",
    ]
    for key in positive:
        value = values.get(key)
        if value is not None and value <= 0:
            errors.append(f"{key}: must be greater than 0")
    for key in ("braze.min_resend_interval_s", "delivery.retry_window_s", "delivery.coalesce_s"):
        value = values.get(key)
        if value is not None and value < 0:
            errors.append(f"{key}: must be 0 or more")
    lease, timeout = values.get("delivery.lease_s"), values.get("braze.timeout_s")
    if lease is not None and timeout is not None and lease <= timeout:
        errors.append(
            "delivery.lease_s: must be longer than braze.timeout_s, so a request always ends "
            "before its users can be claimed again"
        )
    port = values.get("server.port")
    if port is not None and port > 65535:
        errors.append("server.port: must be at most 65535")
    objects = values.get("braze.max_objects_per_request")
    if objects is not None and objects > 75:
        errors.append("braze.max_objects_per_request: Braze accepts at most 75 objects per request")
    if values.get("currents.environment") not in (None, "production", "development"):
        errors.append("currents.environment: must be 'production' or 'development'")
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
    for key in ("braze.allowed_custom_endpoints", "currents.allowed_mparticle_urls"):
        for prefix in values.get(key) or ():
            if not (prefix.startswith("http://") or prefix.startswith("https://")):
                errors.append(f"{key}: {prefix!r} must start with http:// or https://")
    mp_url = values.get("currents.mparticle_url")
    if mp_url is not None and not mp_url.startswith(("http://", "https://")):
        errors.append("currents.mparticle_url: must be an http(s) URL")


def _parse_feeds(raw: object, errors: list[str]) -> tuple[FeedSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        errors.append("currents.feeds: must be a table of feeds")
        return ()
    feeds = []
    for name, spec in raw.items():
        where = f"currents.feeds.{name}"
        if not isinstance(spec, Mapping):
            errors.append(f"{where}: must be a table with key, secret, platform")
            continue
        unknown = set(spec) - {"key", "secret", "platform", "app_ids"}
        for extra in sorted(unknown):
            errors.append(f"{where}.{extra}: unknown key")
        missing = [k for k in ("key", "secret", "platform") if not spec.get(k)]
        for k in missing:
            errors.append(f"{where}.{k}: required")
        platform = str(spec.get("platform", "")).lower()
        if platform and platform not in FEED_PLATFORMS:
            errors.append(f"{where}.platform: must be one of {', '.join(FEED_PLATFORMS)}")
        app_ids = spec.get("app_ids", ())
        if isinstance(app_ids, str):
            app_ids = [a.strip() for a in app_ids.split(",") if a.strip()]
        if missing or (platform and platform not in FEED_PLATFORMS):
            continue
        feeds.append(
            FeedSettings(
                name=str(name),
                key=Secret(str(spec["key"])),
                secret=Secret(str(spec["secret"])),
                platform=platform,
                app_ids=tuple(str(a) for a in app_ids),
            )
        )
    return tuple(feeds)


def _nest(flat: Mapping[str, t.Any]) -> dict[str, t.Any]:
    out: dict[str, t.Any] = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, t.Any] | None = None,
) -> Settings:
    """Build validated settings from defaults, a TOML file, the environment and overrides.

    Args:
        path: TOML file; falls back to ``AUDIENCE_SYNC_CONFIG``, then built-in defaults only.
        environ: the environment to read ``AUDIENCE_SYNC_*`` from (``os.environ`` by default).
        overrides: dotted keys set last (tests).

    Raises:
        ConfigValidationError: with every problem found, each naming its key.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    errors: list[str] = []
    layers: list[dict[str, t.Any]] = []
    source = "defaults"
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                layers.append(_flatten(tomllib.load(fh)))
            source = str(path)
        except FileNotFoundError:
            errors.append(f"config file {path}: not found")
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"config file {path}: invalid TOML: {exc}")
    layers.append(dict(_env_overrides(environ)))
    if overrides:
        layers.append(_flatten(_nest(overrides)))

    merged: dict[str, t.Any] = {}
    for layer in layers:
        merged.update(layer)

    values: dict[str, t.Any] = {}
    for key, (kind, default) in FIELDS.items():
        if key in merged:
            values[key] = _coerce(key, kind, merged.pop(key), errors)
        else:
            values[key] = (
                tuple(default) if isinstance(default, list) else _coerce(key, kind, default, [])
            )

    feed_raw = _nest(
        {
            k[len("currents.feeds.") :]: v
            for k, v in merged.items()
            if k.startswith("currents.feeds.")
        }
    )
    connections_raw = {
        k[len("connections.") :]: v for k, v in merged.items() if k.startswith("connections.")
    }
    for key in list(merged):
        if key.startswith(("currents.feeds.", "connections.")):
            merged.pop(key)
    for key in sorted(merged):
        errors.append(f"{key}: unknown key")

    connections: dict[str, dict[str, str]] = {}
    for dotted, value in connections_raw.items():
        account, _, setting = dotted.partition(".")
        if not account.isdigit() or not setting or "." in setting:
            errors.append(f"connections.{dotted}: expected connections.<account_id>.<setting id>")
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        connections.setdefault(account, {})[setting] = str(value)

    feeds = _parse_feeds(feed_raw or None, errors)
    _check_ranges(values, errors)
    if errors:
        raise ConfigValidationError(errors)
    return Settings(
        values=MappingProxyType(values),
        feeds=feeds,
        connections=MappingProxyType({k: MappingProxyType(v) for k, v in connections.items()}),
        source=source,
    )
