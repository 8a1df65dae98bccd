"""The scheduled jobs by name (SPEC §7): what each one runs and how often by default.

A job is a function ``run(ctx) -> JobResult``. Built-in jobs register themselves from
:func:`builtin_jobs`; the Currents jobs are added with :func:`register` by the module that
owns them (see :data:`CURRENTS_JOBS`), so the scheduler, the lease and ``audience-sync jobs run
NAME`` need no change when they land.
"""

from __future__ import annotations

import importlib
import importlib.util
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

CURRENTS_JOBS = ("currents_watch", "currents_expire")
"""The hook for the Currents room: a module :data:`CURRENTS_JOBS_MODULE` with ``SPECS``, a
sequence of :class:`JobSpec` named as here (default intervals 60 s and 600 s, SPEC §7), is
scheduled with the built-in jobs as soon as it exists; ``jobs.currents_watch.*`` and
``jobs.currents_expire.*`` then go into the settings' ``FIELDS`` (until then the defaults of
the specs apply). Until that module lands the two jobs are simply absent from the schedule."""
CURRENTS_JOBS_MODULE = "audience_sync.currents.jobs"


def register(spec: JobSpec) -> None:
    """Add (or replace) a job by name."""
    with _LOCK:
        _REGISTRY[spec.name] = spec


def builtin_jobs() -> dict[str, JobSpec]:
    """Every registered job, the built-in ones first imported (they register on import)."""
    from audience_sync.jobs import audit_braze, cleanup_removed, prune, retry_due

    for module in (retry_due, audit_braze, cleanup_removed, prune):
        register(module.SPEC)
    for spec in _currents_specs():
        register(spec)
    with _LOCK:
        return dict(_REGISTRY)


def _currents_specs() -> tuple[JobSpec, ...]:
    """The Currents jobs, if :data:`CURRENTS_JOBS_MODULE` exists (see :data:`CURRENTS_JOBS`)."""
    try:
        found = importlib.util.find_spec(CURRENTS_JOBS_MODULE)
    except ModuleNotFoundError:  # no audience_sync.currents package yet
        return ()
    if found is None:
        return ()
    module = importlib.import_module(CURRENTS_JOBS_MODULE)
    return tuple(getattr(module, "SPECS", ()))
