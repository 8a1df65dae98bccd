"""One sender: claim dirty users -> diff at send time -> batch -> send -> record (SPEC §4.1, §5).

Each step's decision comes from the pure core (``diff``, ``decide_retry``) or the Braze room
(``build_requests``, ``classify_track_response``); this module only moves data between them, the
database and the network, in this order for every batch:

1. claim a lease on up to ``CLAIM_REQUESTS`` requests' worth of due users (one transaction);
2. read their desired and acknowledged state and compute each minimal write;
3. send full requests per workspace, within the key's rate budget;
4. record each user's outcome in one transaction per request: acknowledged state and data
   points for the accepted, a durable retry time (or the dead-letter store) for the failed, and
   a new due time without an attempt for the rate-limited and the suspended.

A SIGKILL anywhere loses nothing: until step 4 commits, the user's outbox row is only leased,
and the lease runs out. Resending after such a crash resends the same difference, which sets
the same values (idempotent).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import typing as t
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync import telemetry
from audience_sync.braze.client import BrazeClient
from audience_sync.braze.keys import fingerprint
from audience_sync.braze.outcomes import Kind, TrackOutcome, classify_response
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.braze.requests import ObjectTooLargeError, build_requests
from audience_sync.core.account import (
    ConnectionSettings,
    merge_settings,
    parse_connection_settings,
)
from audience_sync.core.attributes import (
    Contribution,
    Membership,
    Uncertain,
    Write,
    desired_attributes,
    diff,
    touched,
)
from audience_sync.core.datapoints import datapoints_of
from audience_sync.core.retry import RetryPolicy, decide_retry
from audience_sync.settings import Settings
from audience_sync.store import outbox, workspaces
from audience_sync.store.braze_state import (
    Acknowledged,
    AckRow,
    Snapshot,
    add_datapoints,
    load_snapshot,
    save_acknowledged,
)
from audience_sync.store.counters import increment
from audience_sync.store.engine import read_only
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)

CLAIM_REQUESTS = 4
"""A sender claims this many full requests' worth of users at a time."""
PROBE_CHECK_INTERVAL_S = 1.0
"""How often a sender looks for suspended workspaces whose probe is due."""
NO_CONNECTION_RETRY_S = 60.0
"""Users of a workspace with no active connection are looked at again after this long."""


@dataclass(frozen=True, kw_only=True)
class PendingWrite:
    """A claimed user with the write computed for it."""

    claim: outbox.Claim
    write: Write
    flags: frozenset[str]
    # What earlier unconfirmed writes may have changed (before this attempt).
    uncertain: Uncertain
    # ``(uncertain | touched(write)).to_json()``, when the caller already has it.
    during: dict[str, t.Any] | None = None

    @property
    def external_id(self) -> str:
        """The Braze user."""
        return self.claim.external_id

    def in_flight_before(self) -> dict[str, t.Any] | None:
        """The write-ahead record to restore when Braze surely applied nothing."""
        return self.uncertain.to_json()

    def in_flight_during(self) -> dict[str, t.Any] | None:
        """The write-ahead record while this write is unconfirmed."""
        if self.during is not None:
            return self.during
        return (self.uncertain | touched(self.write)).to_json()


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where a workspace's requests go."""

    workspace_id: int
    endpoint: str
    api_key: str

    @property
    def key_id(self) -> str:
        """The rate-budget key: a fingerprint, so the key itself never sits in memory twice."""
        return fingerprint(self.api_key)


class Sender:
    """Delivers dirty users to Braze; several may run at once (threads or processes)."""

    def __init__(
        self,
        *,
        engine: sa.Engine,
        settings: Settings,
        client: BrazeClient,
        budget: RateBudget,
        worker_id: str,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.client = client
        self.budget = budget
        self.worker_id = worker_id
        self.clock = clock
        self.jitter = jitter
        self.stop = stop or threading.Event()
        self.max_objects: int = settings.get("braze.max_objects_per_request")
        self.max_bytes: int = settings.get("braze.max_request_bytes")
        self.min_resend_s: float = settings.get("braze.min_resend_interval_s")
        self.array_max_length: int = settings.get("braze.array_max_length")
        self.array_write: str = settings.get("braze.array_write")
        self.lease_s: float = settings.get("delivery.lease_s")
        self.probe_interval_s: float = settings.get("braze.probe_interval_s")
        self.policy = RetryPolicy(
            base_s=settings.get("delivery.backoff_base_s"),
            cap_s=settings.get("delivery.backoff_cap_s"),
            retry_window_s=settings.get("delivery.retry_window_s"),
            max_attempts=settings.get("delivery.max_attempts"),
        )
        self._parsed: dict[tuple[int, str], ConnectionSettings] = {}
        self._next_probe_check = 0.0

    # -- the loop ------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Deliver until ``stop`` is set; sleep ``delivery.poll_interval_s`` when idle."""
        poll = self.settings.get("delivery.poll_interval_s")
        while not self.stop.is_set():
            try:
                handled = self.run_once()
            except sa.exc.OperationalError as exc:
                # Database unavailable or locked for too long: leases protect the work.
                logger.warning(
                    "database error in sender; retrying",
                    extra={"action": "sender_db_error", "error": type(exc).__name__},
                )
                handled = 0
            except Exception:
                logger.exception("sender iteration failed", extra={"action": "sender_error"})
                handled = 0
            if not handled:
                self.stop.wait(poll)

    def run_once(self) -> int:
        """Claim, diff, send and record one batch; returns the number of users handled."""
        now = self.clock()
        handled = 0
        if now >= self._next_probe_check:
            self._next_probe_check = now + PROBE_CHECK_INTERVAL_S
            handled += self._probe_suspended(now)
        claims = in_transaction(
            self.engine,
            lambda conn: outbox.claim(
                conn,
                worker_id=self.worker_id,
                now=now,
                lease_s=self.lease_s,
                limit=self.max_objects * CLAIM_REQUESTS,
            ),
            action="claim",
        )
        by_workspace: dict[int, list[outbox.Claim]] = defaultdict(list)
        for c in claims:
            by_workspace[c.workspace_id].append(c)
        for workspace_id, group in by_workspace.items():
            self.deliver(workspace_id, group)
        return handled + len(claims)

    def _probe_suspended(self, now: float) -> int:
        due = in_transaction(
            self.engine,
            lambda conn: workspaces.claim_probes(conn, now=now, interval_s=self.probe_interval_s),
            action="claim_probes",
        )
        handled = 0
        for workspace_id in due:
            claims = in_transaction(
                self.engine,
                lambda conn, ws=workspace_id: outbox.claim(
                    conn,
                    worker_id=self.worker_id,
                    now=now,
                    lease_s=self.lease_s,
                    limit=1,
                    workspace_id=ws,
                    include_suspended=True,
                ),
                action="claim_probe",
            )
            if claims:
                logger.info(
                    "probing suspended workspace",
                    extra={"action": "braze_probe", "workspace_id": workspace_id},
                )
                self.deliver(workspace_id, claims, probe=True)
                handled += len(claims)
        return handled

    # -- one workspace -------------------------------------------------------------------------

    def _settings_of(
        self, account_id: int, raw: Mapping[str, t.Any], fp: str
    ) -> ConnectionSettings:
        key = (account_id, fp)
        parsed = self._parsed.get(key)
        if parsed is None:
            merged = merge_settings(raw, self.settings.connection_overrides(account_id))
            parsed = parse_connection_settings(
                account_id,
                merged,
                allowed_custom_endpoints=self.settings.get("braze.allowed_custom_endpoints"),
            )
            self._parsed[key] = parsed
        return parsed

    def deliver(
        self, workspace_id: int, claims: Sequence[outbox.Claim], *, probe: bool = False
    ) -> None:
        """Compute and send the writes of claimed users of one workspace."""
        now = self.clock()
        ids = [c.external_id for c in claims]
        with read_only(self.engine) as conn:
            snapshot = load_snapshot(conn, workspace_id, ids, all_connections=True)
        active = {
            c.account_id: self._settings_of(
                c.account_id, c.account_settings, c.settings_fingerprint
            )
            for c in snapshot.connections
            if c.state == "active"
        }
        active = {a: s for a, s in active.items() if s.is_valid}
        if not active:
            in_transaction(
                self.engine,
                lambda conn: outbox.release(
                    conn,
                    worker_id=self.worker_id,
                    workspace_id=workspace_id,
                    due_at={i: now + NO_CONNECTION_RETRY_S for i in ids},
                    reason="no_active_connection",
                ),
                action="release",
            )
            return
        first = next(iter(active.values()))
        target = Target(
            workspace_id=workspace_id, endpoint=first.rest_endpoint, api_key=first.rest_api_key
        )

        # A connection whose settings are invalid still owns attributes in this workspace: its
        # users wait until it is fixed (SPEC §3.4), instead of having those attributes cleared.
        blocked = {c.account_id for c in snapshot.connections} - set(active)
        held_back: dict[str, float] = {}
        deferred: dict[str, float] = {}
        unchanged: list[AckRow] = []
        pending: list[PendingWrite] = []
        new_flags: Counter[str] = Counter()
        memo: dict[tuple[t.Any, ...], tuple[Write, frozenset[str], dict[str, t.Any] | None]] = {}
        for claim in claims:
            if blocked and any(
                d.account_id in blocked for d in snapshot.desired.get(claim.external_id, ())
            ):
                held_back[claim.external_id] = now + NO_CONNECTION_RETRY_S
                continue
            ack = snapshot.acknowledged.get(claim.external_id, Acknowledged())
            if ack.last_write_at is not None and now < ack.last_write_at + self.min_resend_s:
                deferred[claim.external_id] = ack.last_write_at + self.min_resend_s
                continue
            uncertain = Uncertain.from_json(claim.in_flight)
            write, flags, during = self._compute_memo(
                memo, claim.external_id, snapshot, active, ack, uncertain
            )
            for flag in flags - set(ack.flags):
                new_flags[flag] += 1
            if write.is_empty:
                unchanged.append(
                    AckRow(
                        external_id=claim.external_id,
                        attributes=write.acknowledged,
                        flags=sorted(flags),
                        outcome="unchanged",
                        wrote=False,
                    )
                )
            else:
                pending.append(
                    PendingWrite(
                        claim=claim, write=write, flags=flags, uncertain=uncertain, during=during
                    )
                )

        def record_unchanged(conn: sa.Connection) -> None:
            outbox.release(
                conn, worker_id=self.worker_id, workspace_id=workspace_id, due_at=deferred
            )
            outbox.release(
                conn,
                worker_id=self.worker_id,
                workspace_id=workspace_id,
                due_at=held_back,
                reason="connection_invalid",
            )
            changed = [r for r in unchanged if self._ack_changed(r, snapshot)]
            save_acknowledged(conn, workspace_id=workspace_id, rows=changed, now=now)
            outbox.finish(
                conn,
                worker_id=self.worker_id,
                workspace_id=workspace_id,
                external_ids=[r.external_id for r in unchanged],
                now=now,
                next_due_at=now,
            )
            counts = {(f"workspace:{workspace_id}", flag): n for flag, n in new_flags.items()}
            if unchanged:
                counts[(f"workspace:{workspace_id}", "unchanged")] = len(unchanged)
                # A resend-everything output would have sent these users whole (SPEC §4.5).
                counts[(f"workspace:{workspace_id}", "datapoints_full")] = sum(
                    datapoints_of(r.attributes) for r in unchanged
                )
            if counts:
                increment(conn, counts, now=now)

        in_transaction(self.engine, record_unchanged, action="record_unchanged")
        if pending:
            self._send_all(target, pending, probe=probe)

    @staticmethod
    def _ack_changed(row: AckRow, snapshot: Snapshot) -> bool:
        before = snapshot.acknowledged.get(row.external_id)
        if before is None:
            return True
        return set(row.flags) != set(before.flags) or dict(row.attributes) != dict(
            before.attributes
        )

    def _compute_memo(
        self,
        memo: dict[tuple[t.Any, ...], tuple[Write, frozenset[str], dict[str, t.Any] | None]],
        external_id: str,
        snapshot: Snapshot,
        active: Mapping[int, ConnectionSettings],
        ack: Acknowledged,
        uncertain: Uncertain,
    ) -> tuple[Write, frozenset[str], dict[str, t.Any] | None]:
        """:meth:`_compute`, once per distinct input within one batch.

        The write depends on the user only through its desired rows, acknowledged attributes
        and uncertain keys (``active`` and ``snapshot.audience_accounts`` are the batch's);
        users sharing all three (say, new users in the same audiences) get the same write
        with their own ``external_id``. Also returns the write-ahead record of the write
        (:meth:`PendingWrite.in_flight_during`).
        """
        desired = snapshot.desired.get(external_id, ())
        acknowledged = (
            json.dumps(ack.attributes, sort_keys=True, separators=(",", ":"))
            if ack.attributes
            else ""
        )
        key = (desired, acknowledged, uncertain)
        hit = memo.get(key)
        if hit is None:
            write, flags = self._compute(external_id, snapshot, active, ack, uncertain)
            during = (uncertain | touched(write)).to_json()
            memo[key] = (write, flags, during)
            return write, flags, during
        template, flags, during = hit
        attributes = dict(template.attributes)
        attributes["external_id"] = external_id
        write = Write(
            external_id=external_id,
            attributes=attributes,
            acknowledged=dict(template.acknowledged),
            datapoints=template.datapoints,
            charges=template.charges,
        )
        return write, flags, during

    def _compute(
        self,
        external_id: str,
        snapshot: Snapshot,
        active: Mapping[int, ConnectionSettings],
        ack: Acknowledged,
        uncertain: Uncertain,
    ) -> tuple[Write, frozenset[str]]:
        contributions = []
        for d in snapshot.desired.get(external_id, ()):
            settings = active.get(d.account_id)
            if settings is None:
                continue
            contributions.append(
                Contribution(
                    account_id=d.account_id,
                    parts=settings.parts,
                    memberships=[
                        Membership(audience_id=a, name=n, is_member=m) for a, n, m in d.memberships
                    ],
                    api_key=settings.api_key,
                    email=d.email,
                    email_updated_at=d.email_updated_at,
                    push_tokens=d.push_tokens,
                    update_existing_only=settings.update_existing_only,
                )
            )
        desired = desired_attributes(contributions, array_max_length=self.array_max_length)
        write = diff(
            external_id,
            desired,
            ack.attributes,
            array_write=self.array_write,
            audience_accounts=snapshot.audience_accounts,
            uncertain=uncertain,
        )
        return write, desired.flags

    # -- sending -------------------------------------------------------------------------------

    def _send_all(self, target: Target, pending: list[PendingWrite], *, probe: bool) -> None:
        objects = [p.write.attributes for p in pending]
        while True:
            try:
                requests = build_requests(
                    objects, max_objects=self.max_objects, max_bytes=self.max_bytes
                )
                break
            except ObjectTooLargeError as exc:
                culprit = pending.pop(exc.index)
                objects.pop(exc.index)
                self._record(target, [], [(culprit, True, "object_too_large", False)], Counter())
        for request in requests:
            batch = [pending[i] for i in request.indices]
            if self.stop.is_set():
                self._release(target, batch, self.clock(), reason="shutdown")
                continue
            self._send(target, batch, request.body, probe=probe)

    def _wait_for_budget(self, target: Target) -> bool:
        """Sleep until the key's budget allows a request; False if asked to stop meanwhile."""
        wait = self.budget.reserve(target.key_id)
        if wait > 0:
            return not self.stop.wait(wait)
        return True

    def _send(self, target: Target, batch: list[PendingWrite], body: bytes, *, probe: bool) -> None:
        if not self._wait_for_budget(target):
            self._release(target, batch, self.clock(), reason="shutdown")
            return
        held = in_transaction(
            self.engine,
            lambda conn: outbox.renew(
                conn,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                in_flight={p.external_id: p.in_flight_during() for p in batch},
                until=self.clock() + self.lease_s,
            ),
            action="renew",
        )
        if len(held) < len(batch):
            # A lease ran out (the process stalled): another sender owns those users now.
            lost = len(batch) - len(held)
            logger.warning(
                "lease lost before sending; leaving those users to their new sender",
                extra={"action": "lease_lost", "workspace_id": target.workspace_id, "users": lost},
            )
            batch = [p for p in batch if p.claim.external_id in held]
            if not batch:
                return
            objects = [p.write.attributes for p in batch]
            for request in build_requests(
                objects, max_objects=self.max_objects, max_bytes=self.max_bytes
            ):
                self._send(target, [batch[i] for i in request.indices], request.body, probe=probe)
            return
        started = time.perf_counter()
        response = self.client.track(target.endpoint, target.api_key, body)
        now = self.clock()
        self.budget.observe(target.key_id, response.headers)
        outcome = classify_response(response, sent=len(batch), now=now)
        elapsed = time.perf_counter() - started
        telemetry.braze_request(outcome.kind, objects=len(batch), seconds=elapsed)
        logger.debug(
            "braze request",
            extra={
                "action": "braze_batch_sent",
                "workspace_id": target.workspace_id,
                "objects": len(batch),
                "bytes": len(body),
                "status": response.status,
                "outcome": outcome.kind,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        self._act(target, batch, outcome, probe=probe, now=now)

    def _act(
        self,
        target: Target,
        batch: list[PendingWrite],
        outcome: TrackOutcome,
        *,
        probe: bool,
        now: float,
    ) -> None:
        counts: Counter[str] = Counter()
        kind = outcome.kind
        if kind in (Kind.ACCEPTED, Kind.PARTIAL):
            if probe and in_transaction(
                self.engine,
                lambda conn: workspaces.resume(conn, workspace_id=target.workspace_id),
                action="resume",
            ):
                logger.info(
                    "workspace resumed after a successful probe",
                    extra={"action": "braze_resumed", "workspace_id": target.workspace_id},
                )
            accepted = [p for i, p in enumerate(batch) if i not in outcome.per_object]
            # Braze names these objects as not applied: nothing about them became uncertain.
            failed = [
                (batch[i], o.permanent, o.reason, False)
                for i, o in sorted(outcome.per_object.items())
            ]
            counts["accepted"] += len(accepted)
            self._record(target, accepted, failed, counts)
            return
        if kind == Kind.RETRY_ALL:
            # 5xx, timeout, dropped connection: Braze may have applied any of it.
            self._record(target, [], [(p, False, outcome.reason, True) for p in batch], counts)
            return
        if kind == Kind.RATE_LIMITED:
            retry_at = outcome.retry_at or now + 1.0
            self.budget.pause(target.key_id, retry_at)
            self._release(target, batch, retry_at, reason="rate_limited")
            return
        if kind == Kind.SPLIT and len(batch) > 1:
            middle = len(batch) // 2
            for half in (batch[:middle], batch[middle:]):
                objects = [p.write.attributes for p in half]
                for request in build_requests(
                    objects, max_objects=self.max_objects, max_bytes=self.max_bytes
                ):
                    self._send(
                        target, [half[i] for i in request.indices], request.body, probe=probe
                    )
            return
        if kind in (Kind.SPLIT, Kind.BAD_REQUEST):
            self._record(target, [], [(p, True, outcome.reason, False) for p in batch], counts)
            return

        # SUSPEND, CONFIG_ERROR: the key or URL is wrong for every user of the workspace.
        def suspend(conn: sa.Connection) -> bool:
            first = workspaces.suspend(
                conn,
                workspace_id=target.workspace_id,
                reason=outcome.reason,
                now=now,
                probe_at=now + self.probe_interval_s,
            )
            increment(conn, {(f"workspace:{target.workspace_id}", outcome.reason): 1}, now=now)
            return first

        if in_transaction(self.engine, suspend, action="suspend"):
            logger.warning(
                "workspace suspended: Braze refused the key or URL",
                extra={
                    "action": "braze_suspended",
                    "workspace_id": target.workspace_id,
                    "reason": outcome.reason,
                },
            )
        self._release(target, batch, now, reason=outcome.reason)

    def _release(
        self, target: Target, batch: Sequence[PendingWrite], due_at: float, *, reason: str
    ) -> None:
        """Hand users back without an attempt; Braze surely applied nothing of this write."""

        def release(conn: sa.Connection) -> None:
            outbox.release(
                conn,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                due_at={p.external_id: due_at for p in batch},
                reason=reason,
                in_flight={p.external_id: p.in_flight_before() for p in batch},
            )
            increment(
                conn, {(f"workspace:{target.workspace_id}", reason): len(batch)}, now=self.clock()
            )

        in_transaction(self.engine, release, action="release")

    def _record(
        self,
        target: Target,
        accepted: Sequence[PendingWrite],
        failed: Sequence[tuple[PendingWrite, bool, str, bool]],
        counts: Counter[str],
    ) -> None:
        """Persist one request's outcome for every user in it, in one transaction."""
        now = self.clock()
        failures = []
        dead = 0
        for p, permanent, reason, maybe_applied in failed:
            attempts = p.claim.attempts + 1
            first_failure = p.claim.first_failure_at or now
            retry_at = None
            if not permanent:
                retry_at = decide_retry(
                    self.policy,
                    attempts=attempts,
                    first_failure_at=first_failure,
                    now=now,
                    jitter=self.jitter(),
                ).retry_at
            if retry_at is None:
                dead += 1
                logger.warning(
                    "delivery gave up for a user",
                    extra={
                        "action": "delivery_gave_up",
                        "workspace_id": target.workspace_id,
                        "reason": reason,
                        "attempts": attempts,
                    },
                )
            failures.append(
                outbox.Failure(
                    external_id=p.claim.external_id,
                    attempts=attempts,
                    first_failure_at=first_failure,
                    retry_at=retry_at,
                    reason=reason,
                    in_flight=p.in_flight_during() if maybe_applied else p.in_flight_before(),
                )
            )
            counts[reason] += 1
        if dead:
            counts["dead_lettered"] += dead
        scope = f"workspace:{target.workspace_id}"

        def record(conn: sa.Connection) -> tuple[int, int]:
            owned = outbox.finish(
                conn,
                worker_id=self.worker_id,
                workspace_id=target.workspace_id,
                external_ids=[p.claim.external_id for p in accepted],
                now=now,
                next_due_at=now + self.min_resend_s,
            )
            # Only the lease holder records what Braze acknowledged (see outbox.renew).
            mine = [p for p in accepted if p.claim.external_id in owned]
            charges: Counter[tuple[int, int]] = Counter()
            for p in mine:
                charges.update(p.write.charges)
            save_acknowledged(
                conn,
                workspace_id=target.workspace_id,
                rows=[
                    AckRow(
                        external_id=p.claim.external_id,
                        attributes=p.write.acknowledged,
                        flags=sorted(p.flags),
                        outcome="accepted",
                        wrote=True,
                    )
                    for p in mine
                ],
                now=now,
            )
            outbox.record_failures(
                conn, worker_id=self.worker_id, workspace_id=target.workspace_id, failures=failures
            )
            add_datapoints(conn, workspace_id=target.workspace_id, charges=charges, now=now)
            # What a resend-everything output would have spent on the same users (SPEC §4.5).
            full = sum(datapoints_of(p.write.acknowledged) for p in mine)
            spent = sum(charges.values())
            totals = counts + Counter({"datapoints": spent, "datapoints_full": full})
            increment(conn, {(scope, r): n for r, n in totals.items() if n}, now=now)
            return spent, full

        telemetry.datapoints(*in_transaction(self.engine, record, action="record"))
