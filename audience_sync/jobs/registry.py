"""The scheduled jobs by name (SPEC §7): what each one runs and how often by default.

A job is a function ``run(ctx) -> JobResult`` in a module of its own under ``jobs/``;
:func:`builtin_jobs` registers every one of them (tests may :func:`register` more).
"""

from __future__ import annotations

import threading
import time
import typing as t
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

if t.TYPE_CHECKING:
    from audience_sync.runtime import Runtime


@dataclass(frozen=True, kw_only=True)
class JobResult:
    """What a run reports: ``counts`` (flat numbers, shown everywhere) and ``details``
    (structured, e.g. the audit's drift per audience with sample users)."""

    counts: Mapping[str, int | float] = field(default_factory=dict)
    details: Mapping[str, t.Any] | None = None


@dataclass(frozen=True, kw_only=True)
class JobContext:
    """What a running job may use. ``keep_alive()`` extends the job's lease and returns False
    once the lease is lost or the process is stopping: a long job checks it between pages."""

    runtime: Runtime
    clock: Callable[[], float] = time.time
    stop: threading.Event = field(default_factory=threading.Event)
    keep_alive: Callable[[], bool] = lambda: True


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One scheduled job."""

    name: str
    run: Callable[[JobContext], JobResult]
    default_interval_s: float
    description: str = ""

    def interval_s(self, values: Mapping[str, t.Any]) -> float:
        """``jobs.<name>.interval_s`` if the settings know it, else the default."""
        return float(values.get(f"jobs.{self.name}.interval_s", self.default_interval_s))

    def enabled(self, values: Mapping[str, t.Any]) -> bool:
        """``jobs.<name>.enabled`` (default true)."""
        return bool(values.get(f"jobs.{self.name}.enabled", True))


_REGISTRY: dict[str, JobSpec] = {}
_LOCK = threading.Lock()



def register(spec: JobSpec) -> None:
    """Add (or replace) a job by name."""
    with _LOCK:
        _REGISTRY[spec.name] = spec


def builtin_jobs() -> dict[str, JobSpec]:
    """Every registered job, the built-in ones first imported (they register on import)."""
    from audience_sync.jobs import (
        audit_braze,
        cleanup_removed,
        currents_expire,
        currents_watch,
        prune,
        retry_due,
    )

    for module in (retry_due, audit_braze, cleanup_removed, currents_watch, currents_expire, prune):
        register(module.SPEC)
    with _LOCK:
        return dict(_REGISTRY)
