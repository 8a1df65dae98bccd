"""``audit_braze`` and ``audience-sync reconcile`` (SPEC §7): read what Braze holds with
``/users/export/ids``, compare it with the acknowledged state (:mod:`audience_sync.core.audit`),
and repair drift through the normal sender.

Per workspace with an active connection, one page of users at a time: read the page's
acknowledged rows (:mod:`audience_sync.store.audit`), export them (50 ids per request within
the export budget), load their desired state, compare, then in one transaction store the
repaired acknowledged state of the drifted users, mark them dirty, and stamp ``verified_at``
on everyone read. The scheduled job reads ``jobs.audit_braze.users_per_run`` users per run,
oldest verified first; ``reconcile`` walks every user. ``--dry-run`` only reports.

Figures (default budget, 250 requests per minute x 50 ids): at most 12,500 users per minute
(208 users/s, 1,000,000 users in 80 minutes); measured against the local Braze server, the
budget's 5 % arrival margin gives 3.8 requests/s, about 190 users/s once past the first
second's burst: a full audit of 1,000,000 users takes about 88 minutes.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.export import Exporter, ExportKind, ExportResult
from audience_sync.core.attributes import KEEP, PUSH_TOKENS_KEY, diff, per_segment_attribute
from audience_sync.core.audit import Observed, audit_user
from audience_sync.core.connection import ConnectionSettings, effective_settings
from audience_sync.core.delivery_plan import desired_of
from audience_sync.core.states import ConnectionState
from audience_sync.jobs.registry import JobContext, JobResult, JobSpec
from audience_sync.settings import Settings
from audience_sync.store import audit as store
from audience_sync.store.counters import increment
from audience_sync.store.engine import read_only
from audience_sync.store.snapshot import load_snapshot
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)

PAGE = 500
"""Users read, exported (10 requests) and recorded per transaction."""
SAMPLE_SIZE = 5
"""User ids kept per (connection, audience, kind) in the drift report."""


@dataclass
class AuditReport:
    """What one audit run found (mutable while it runs)."""

    users_read: int = 0
    users_verified: int = 0
    users_unread: int = 0
    users_drifted: int = 0
    repairs_queued: int = 0
    repair_datapoints: int = 0
    requests: int = 0
    skipped_workspaces: Counter[str] = field(default_factory=Counter)
    drift_by_kind: Counter[str] = field(default_factory=Counter)
    # (account_id, audience_id, kind) -> users; audience 0: not about one audience (email,
    # a user missing with no audience acknowledged).
    drift_by_audience: Counter[tuple[int, int, str]] = field(default_factory=Counter)
    samples: dict[tuple[int, int, str], list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Flat numbers for the job-run record."""
        out = {
            "users_read": self.users_read,
            "users_verified": self.users_verified,
            "users_unread": self.users_unread,
            "users_drifted": self.users_drifted,
            "repairs_queued": self.repairs_queued,
            "repair_datapoints": self.repair_datapoints,
            "export_requests": self.requests,
        }
        out.update({f"drift_{k}": n for k, n in sorted(self.drift_by_kind.items())})
        out.update({f"skipped_{k}": n for k, n in sorted(self.skipped_workspaces.items())})
        return out

    def details(self) -> dict[str, t.Any]:
        """Drift per connection and audience, with sample user ids."""
        return {
            "drift": [
                {
                    "account_id": account,
                    "audience_id": audience,
                    "kind": kind,
                    "users": n,
                    "sample": self.samples.get((account, audience, kind), []),
                }
                for (account, audience, kind), n in sorted(self.drift_by_audience.items())
            ]
        }


def _parse(settings: Settings, account_id: int, raw: Mapping[str, t.Any]) -> ConnectionSettings:
    return effective_settings(
        account_id,
        raw,
        overrides=settings.connection_overrides(account_id),
        allowed_custom_endpoints=tuple(settings.get("braze.allowed_custom_endpoints")),
    ).settings


class Auditor:
    """Runs the audit over workspaces; one instance per run."""

    def __init__(
        self,
        engine: sa.Engine,
        settings: Settings,
        *,
        client: BrazeClient | None = None,
        stop: threading.Event | None = None,
        keep_alive: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.stop = stop or threading.Event()
        self.keep_alive = keep_alive
        self.clock = clock
        self.progress = progress
        self._own_client = client is None
        self.client = client or BrazeClient(
            timeout_s=settings.get("braze.timeout_s"),
            dry_run=settings.get("braze.dry_run"),
            dry_run_path=settings.get("braze.dry_run_path"),
        )
        self.exporter = Exporter(
            self.client,
            requests_per_minute=settings.get("braze.export_requests_per_minute"),
            stop=self.stop,
            clock=clock,
        )
        self.settle_s: float = settings.get("jobs.audit_braze.settle_s")
        self.array_max_length: int = settings.get("braze.array_max_length")
        self.array_write: str = settings.get("braze.array_write")
        self.report = AuditReport()

    def close(self) -> None:
        """Close the HTTP client this auditor made."""
        if self._own_client:
            self.client.close()

    def total_users(self, *, account_id: int | None = None) -> int:
        """Acknowledged users of the selected workspaces (a progress bar's total)."""
        with read_only(self.engine) as conn:
            spaces = store.workspaces_to_audit(conn, account_id=account_id)
            return sum(
                store.count_users(conn, workspace_id=ws, account_id=account_id) for ws in spaces
            )

    def run(
        self, *, full: bool, dry_run: bool = False, account_id: int | None = None, budget: int = 0
    ) -> AuditReport:
        """Audit every selected workspace: all users (``full``) or up to ``budget`` users,
        oldest verified first, shared evenly between the workspaces (what a small one leaves
        goes to the next), so a large workspace never starves the others. With ``dry_run``
        nothing is written."""
        if self.settings.get("braze.dry_run"):
            # Nothing was really written to Braze: there is nothing to compare with.
            self.report.skipped_workspaces["dry_run"] += 1
            return self.report
        with read_only(self.engine) as conn:
            spaces = store.workspaces_to_audit(conn, account_id=account_id)
        remaining = len(spaces)
        for workspace_id, accounts in sorted(spaces.items()):
            if not self._continue() or (not full and budget <= 0):
                break
            share = -(-budget // remaining)  # ceil: what is left, split over what is left
            remaining -= 1
            left = self._workspace(
                workspace_id,
                accounts,
                full=full,
                dry_run=dry_run,
                account_id=account_id,
                budget=share,
            )
            budget -= share - left
        return self.report

    def _continue(self) -> bool:
        return not self.stop.is_set() and self.keep_alive()

    def _workspace(
        self,
        workspace_id: int,
        accounts: Sequence[int],
        *,
        full: bool,
        dry_run: bool,
        account_id: int | None,
        budget: int,
    ) -> int:
        with read_only(self.engine) as conn:
            snapshot = load_snapshot(conn, workspace_id, [], all_connections=True)
        active = {
            c.account_id: _parse(self.settings, c.account_id, c.account_settings)
            for c in snapshot.connections
            if c.state == ConnectionState.ACTIVE
        }
        active = {a: s for a, s in active.items() if s.is_valid}
        if not active:
            self.report.skipped_workspaces["no_active_connection"] += 1
            return budget
        first = active[min(active)]
        endpoint, api_key = first.rest_endpoint, first.rest_api_key
        after: str | None = None
        while self._continue() and (full or budget > 0):
            now = self.clock()
            with read_only(self.engine) as conn:
                if full:
                    page = store.next_by_id(
                        conn,
                        workspace_id=workspace_id,
                        after=after,
                        limit=PAGE,
                        now=now,
                        settle_s=self.settle_s,
                        account_id=account_id,
                    )
                else:
                    page = store.oldest_verified(
                        conn,
                        workspace_id=workspace_id,
                        limit=min(PAGE, budget),
                        now=now,
                        settle_s=self.settle_s,
                        account_id=account_id,
                    )
            if not page:
                break
            after = page[-1].external_id
            budget -= len(page)
            exported = self.exporter.export(endpoint, api_key, [c.external_id for c in page])
            self.report.requests += exported.requests
            if exported.kind in (ExportKind.REFUSED, ExportKind.DRY_RUN):
                self.report.skipped_workspaces[str(exported.kind)] += 1
                self.report.users_unread += len(page)
                logger.warning(
                    "audit could not read the workspace",
                    extra={
                        "action": "audit_skipped",
                        "workspace_id": workspace_id,
                        "reason": str(exported.kind),
                    },
                )
                break
            unread = set(exported.unread)
            read = [c for c in page if c.external_id not in unread]
            self.report.users_unread += len(unread)
            self._compare(workspace_id, active, read, exported, dry_run=dry_run)
            if self.progress is not None:
                self.progress(len(page))
            if not full and len(page) < PAGE:
                break  # fewer than asked: this workspace is done for this run
        return budget

    def _compare(
        self,
        workspace_id: int,
        active: Mapping[int, ConnectionSettings],
        read: Sequence[store.Candidate],
        exported: ExportResult,
        *,
        dry_run: bool,
    ) -> None:
        ids = [c.external_id for c in read]
        with read_only(self.engine) as conn:
            snapshot = load_snapshot(conn, workspace_id, ids, all_connections=True)
        single = next(iter(active)) if len(active) == 1 else 0
        repairs: list[store.Repair] = []
        verified: list[str] = []
        drift_counts: Counter[tuple[str, str]] = Counter()
        for candidate in read:
            eid = candidate.external_id
            desired = desired_of(eid, snapshot, active, array_max_length=self.array_max_length)
            managed = {
                k for k, v in desired.attributes.items() if v is not KEEP and k != PUSH_TOKENS_KEY
            }
            audience_of_key = {
                per_segment_attribute(name): audience_id
                for d in snapshot.desired.get(eid, ())
                for audience_id, name, _member in d.memberships
            }
            user = exported.users.get(eid)
            if user is None and desired.update_existing_only:
                # updateExistingOnly: a user Braze does not know is meant to stay unknown.
                verified.append(eid)
                self.report.users_read += 1
                continue
            actual = (
                Observed(custom_attributes=user.custom_attributes, email=user.email)
                if user is not None
                else None
            )
            result = audit_user(
                eid,
                acknowledged=candidate.attributes,
                actual=actual,
                managed_keys=managed,
                audience_of_key=audience_of_key,
            )
            self.report.users_read += 1
            if not result.drifted or result.repaired is None:
                verified.append(eid)
                continue
            self.report.users_drifted += 1
            for finding in result.findings:
                self.report.drift_by_kind[str(finding.kind)] += 1
                for audience in finding.audience_ids or (0,):
                    account = snapshot.audience_accounts.get(audience, single)
                    key = (account, audience, str(finding.kind))
                    self.report.drift_by_audience[key] += 1
                    sample = self.report.samples.setdefault(key, [])
                    if len(sample) < SAMPLE_SIZE:
                        sample.append(eid)
                    drift_counts[(f"account:{account}", f"drift_{finding.kind}")] += 1
            cost = diff(
                eid,
                desired,
                result.repaired,
                array_write=self.array_write,
                audience_accounts=snapshot.audience_accounts,
            ).datapoints
            self.report.repair_datapoints += cost
            repairs.append(
                store.Repair(
                    external_id=eid,
                    read_updated_at=candidate.updated_at,
                    attributes=result.repaired,
                )
            )
        if dry_run:
            self.report.repairs_queued += len(repairs)
            self.report.users_verified += len(verified)
            return
        now = self.clock()

        def record(conn: sa.Connection) -> int:
            done = store.apply_audit(
                conn, workspace_id=workspace_id, verified=verified, repairs=repairs, now=now
            )
            increment(conn, drift_counts, now=now)
            return len(done)

        self.report.repairs_queued += in_transaction(self.engine, record, action="audit_record")
        self.report.users_verified += len(verified)


def run(ctx: JobContext) -> JobResult:
    """The scheduled run: ``jobs.audit_braze.users_per_run`` users, oldest verified first."""
    settings = ctx.runtime.settings
    auditor = Auditor(
        ctx.runtime.engine, settings, stop=ctx.stop, keep_alive=ctx.keep_alive, clock=ctx.clock
    )
    try:
        report = auditor.run(full=False, budget=settings.get("jobs.audit_braze.users_per_run"))
    finally:
        auditor.close()
    return JobResult(counts=report.counts(), details=report.details())


SPEC = JobSpec(
    name="audit_braze",
    run=run,
    default_interval_s=1800.0,
    description="read Braze's attributes, compare with the acknowledged state, repair drift",
)
