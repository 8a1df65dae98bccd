"""The Braze room: REST client, request building, rate budget and outcome classification.

Modules, one concept each:

    requests.py   pure: pack encoded attribute objects into full ``/users/track`` bodies
    outcomes.py   pure: classify every ``/users/track`` answer of SPEC §5.3 in one function
    object_errors.py  pure: what one ``errors`` entry means (identity, one field, retry)
    headers.py    pure: read Braze's rate-limit headers (``x-ratelimit-*``, ``Retry-After``)
    ratelimit.py  thread-safe client-side request budget per REST key (SPEC §5.2)
    keys.py       fingerprints of REST API keys: the only form a key may take in logs
    client.py     HTTP adapter (pooled ``requests.Session``, dry run); never raises ``requests.*``
"""

from __future__ import annotations

from audience_sync.braze.client import BrazeClient, TrackResponse
from audience_sync.braze.keys import fingerprint
from audience_sync.braze.outcomes import (
    Kind,
    ObjectOutcome,
    TrackOutcome,
    Verdict,
    classify_response,
    classify_track_response,
)
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.braze.requests import ObjectTooLargeError, PreparedRequest, build_requests

__all__ = [
    "BrazeClient",
    "Kind",
    "ObjectOutcome",
    "ObjectTooLargeError",
    "PreparedRequest",
    "RateBudget",
    "TrackOutcome",
    "TrackResponse",
    "Verdict",
    "build_requests",
    "classify_response",
    "classify_track_response",
    "fingerprint",
]
