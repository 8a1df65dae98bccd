"""Clear a moved connection's attributes from the workspace it left (SPEC §7, with
``cleanupOnRemove``): part of ``cleanup_removed``.

No connection is attached to that workspace any more, so the sender (which writes for the
connections of a workspace) has nothing to write there; this pages the users the connection
left behind and writes, with the old key, the one diff that clears what was acknowledged there:
``null`` for each attribute, the array's values removed (email and push tokens are the user's,
not the connection's, and stay). It uses the sender's pieces: the core diff, request packing,
outcome classification, the rate budget. A request that fails as a whole stops the pass; the
next run resumes where this one stopped.
"""

from __future__ import annotations

import logging
import time
import typing as t
from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.keys import fingerprint
from audience_sync.braze.outcomes import Kind, classify_response
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.braze.requests import build_requests
from audience_sync.core.attributes import DesiredAttributes, diff
from audience_sync.settings import Settings
from audience_sync.store import cleanups, counters
from audience_sync.store.datapoints import add_datapoints
from audience_sync.store.engine import read_only
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)

PAGE = 750
"""Users per pass step: ten full requests."""
NOTHING = DesiredAttributes(attributes={})
REASON_REFUSED = "old_workspace_refused"
"""Counter reason of users left uncleared because the old workspace refuses the old key."""


def clear_old_workspace(
    engine: sa.Engine,
    settings: Settings,
    cleanup: cleanups.Cleanup,
    *,
    client: BrazeClient,
    budget: RateBudget,
    now: Callable[[], float],
    keep_alive: Callable[[], bool],
) -> tuple[int, bool]:
    """Clear the next pages of users; returns (users cleared, whether none is left)."""
    if cleanup.old_target is None or cleanup.old_workspace_id is None:
        return 0, True
    endpoint, api_key = cleanup.old_target
    key_id = fingerprint(api_key)
    max_objects = settings.get("braze.max_objects_per_request")
    max_bytes = settings.get("braze.max_request_bytes")
    cleared = 0
    while keep_alive():
        with read_only(engine) as conn:
            page = cleanups.users_to_clear(conn, cleanup, limit=PAGE)
        if not page:
            return cleared, True
        writes = [diff(e, NOTHING, ack) for e, ack in page]
        outcome_counts: Counter[str] = Counter()
        # Users with nothing of this connection's left there are done without a request.
        done = {w.external_id: w.acknowledged for w in writes if w.is_empty}
        pending = [w for w in writes if not w.is_empty]
        requests = build_requests(
            [w.attributes for w in pending], max_objects=max_objects, max_bytes=max_bytes
        )
        charges: Counter[tuple[int, int]] = Counter()
        stopped = False
        for request in requests:
            wait = budget.reserve(key_id)
            if wait > 0 and not keep_alive():
                stopped = True
                break
            if wait > 0:
                time.sleep(wait)
            batch = [pending[i] for i in request.indices]
            response = client.track(endpoint, api_key, request.body)
            budget.observe(key_id, response.headers)
            outcome = classify_response(response, sent=len(batch), now=now())
            if outcome.kind in (Kind.RETRY_ALL, Kind.RATE_LIMITED):
                # Braze is busy or away: this record waits for the next run.
                if outcome.kind == Kind.RATE_LIMITED and outcome.retry_at:
                    budget.pause(key_id, outcome.retry_at)
                outcome_counts[outcome.reason] += len(batch)
                stopped = True
                break
            if outcome.kind in (Kind.SUSPEND, Kind.CONFIG_ERROR):
                # The old key or URL is refused: nothing can be cleared there, ever. Give up,
                # counted, rather than asking again every run.
                outcome_counts[REASON_REFUSED] += len(page) - len(done)
                _record(engine, cleanup, done, charges, outcome_counts, now())
                logger.warning(
                    "the left workspace refuses the old key: its attributes stay there",
                    extra={
                        "action": "old_workspace_refused",
                        "workspace_id": cleanup.old_workspace_id,
                        "reason": outcome.reason,
                    },
                )
                return cleared + len(done), True
            if outcome.kind not in (Kind.ACCEPTED, Kind.PARTIAL):
                # SPLIT or BAD_REQUEST: Braze refuses these objects as they are; not retried.
                for write in batch:
                    done[write.external_id] = {}
                outcome_counts[outcome.reason] += len(batch)
                continue
            for index, write in enumerate(batch):
                failure = outcome.per_object.get(index)
                if failure is None:
                    done[write.external_id] = write.acknowledged
                    charges.update(write.charges)
                elif failure.permanent:
                    # Braze will never take this user's write: stop asking, count why.
                    done[write.external_id] = {}
                    outcome_counts[failure.reason] += 1

        _record(engine, cleanup, done, charges, outcome_counts, now())
        cleared += len(done)
        if stopped:
            logger.warning(
                "clearing a left workspace paused",
                extra={
                    "action": "old_workspace_paused",
                    "workspace_id": cleanup.old_workspace_id,
                    "reasons": dict(outcome_counts),
                },
            )
            return cleared, False
    return cleared, False


def _record(
    engine: sa.Engine,
    cleanup: cleanups.Cleanup,
    done: dict[str, t.Any],
    charges: Counter[tuple[int, int]],
    outcome_counts: Counter[str],
    at: float,
) -> None:
    """Store one step's outcome: what the old workspace now holds, data points, counters."""
    old = cleanup.old_workspace_id or 0
    scope = f"workspace:{old}"
    counts = {(scope, r): n for r, n in outcome_counts.items()}
    counts[(scope, "cleared_after_move")] = len(done)

    def record(conn: sa.Connection) -> None:
        cleanups.mark_cleared(conn, cleanup, acknowledged=done, now=at)
        add_datapoints(conn, workspace_id=old, charges=charges, now=at)
        counters.increment(conn, counts, now=at)

    in_transaction(engine, record, action="clear_old_workspace")
