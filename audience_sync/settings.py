"""Load and validate the configuration (SPEC §2).

Order of precedence, lowest first: built-in defaults (mirrored in ``config/default.toml``), the TOML
file (``--config PATH`` or ``AUDIENCE_SYNC_CONFIG``), ``AUDIENCE_SYNC_<SECTION>__<KEY>``
environment variables, then test overrides. Every problem is collected and raised at once as one
:class:`ConfigValidationError`. Secret values are wrapped in :class:`Secret`, whose ``repr`` and
``str`` never show the value. The keys, their kinds, defaults and checks are
:mod:`audience_sync.config_keys`.
"""

from __future__ import annotations

import os
import tomllib
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from audience_sync.config_keys import (
    CONFIDENTIAL_ACCOUNT_KEYS,
    FEED_PLATFORMS,
    FIELDS,
    Secret,
    check_ranges,
    coerce,
)
from audience_sync.core.currents.routing import CREDENTIAL_FIELDS, credential_problem
from audience_sync.errors import ConfigValidationError

ENV_PREFIX = "AUDIENCE_SYNC_"
CONFIG_ENV = "AUDIENCE_SYNC_CONFIG"


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

    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret in clear, for the one use that needs them all: masking
        them in log lines (:func:`audience_sync.logs.configure_logging`)."""
        out: list[str] = []
        for value in self.values.values():
            items = value if isinstance(value, tuple) else (value,)
            out.extend(v.reveal() for v in items if isinstance(v, Secret))
        for feed in self.feeds:
            out += [feed.key.reveal(), feed.secret.reveal()]
        for overrides in self.connections.values():
            out.extend(v for k, v in overrides.items() if k in CONFIDENTIAL_ACCOUNT_KEYS)
        return tuple(v for v in out if v)

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
        # Named by feed and field only: the value is a secret.
        bad = [
            (k, problem)
            for k in CREDENTIAL_FIELDS
            if k not in missing and (problem := credential_problem(k, str(spec[k])))
        ]
        for k, problem in bad:
            errors.append(f"{where}.{k}: {problem}")
        platform = str(spec.get("platform", "")).lower()
        if platform and platform not in FEED_PLATFORMS:
            errors.append(f"{where}.platform: must be one of {', '.join(FEED_PLATFORMS)}")
        app_ids = spec.get("app_ids", ())
        if isinstance(app_ids, str):
            app_ids = [a.strip() for a in app_ids.split(",") if a.strip()]
        if missing or bad or (platform and platform not in FEED_PLATFORMS):
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
            values[key] = coerce(key, kind, merged.pop(key), errors)
        else:
            values[key] = (
                tuple(default) if isinstance(default, list) else coerce(key, kind, default, [])
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
    check_ranges(values, errors)
    if errors:
        raise ConfigValidationError(errors)
    return Settings(
        values=MappingProxyType(values),
        feeds=feeds,
        connections=MappingProxyType({k: MappingProxyType(v) for k, v in connections.items()}),
        source=source,
    )
