"""The one timing rule that ties a sender's requests to its users' leases (SPEC §9)."""

from __future__ import annotations

SEND_WITHIN_S = 1.0
"""A request goes out at most this long after its users' lease was renewed with its write-ahead
record. One renewal covers the requests of a claim sent back to back; after a longer pause (a
wait for the rate budget) a sender renews again before sending. A lease cut short
(:func:`audience_sync.store.workers.reap_stale`) ends this much later for it, and the settings
refuse a ``delivery.lease_s`` not longer than ``braze.timeout_s`` plus this."""
