"""The thin I/O part of the mParticle client: ``POST {base}/v2/bulkevents`` with Basic auth per
feed, on the shared :class:`~audience_sync.transport.Transport`. Answers are classified by
:mod:`audience_sync.mparticle.outcomes`; nothing here raises for an HTTP status or the network.
The feed secret only goes into the Authorization header."""

from __future__ import annotations

from dataclasses import dataclass

from audience_sync.mparticle.outcomes import Outcome, classify
from audience_sync.transport import HttpResponse, Transport

BULK_PATH = "/v2/bulkevents"


@dataclass(frozen=True, kw_only=True, repr=False)
class FeedCredentials:
    """Where and as whom one feed sends. ``repr`` hides the secret."""

    base_url: str
    key: str
    secret: str

    def __repr__(self) -> str:
        return f"FeedCredentials(base_url={self.base_url!r}, key=***, secret=***)"


class MParticleClient:
    """Send ready ``/v2/bulkevents`` bodies."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def bulk(self, feed: FeedCredentials, body: bytes) -> HttpResponse:
        """POST a JSON array of batches for one feed."""
        return self.transport.post(
            feed.base_url.rstrip("/") + BULK_PATH,
            body,
            headers={},
            auth=(feed.key, feed.secret),
        )

    def send(self, feed: FeedCredentials, body: bytes, *, now: float) -> Outcome:
        """POST and classify."""
        response = self.bulk(feed, body)
        return classify(
            response.status,
            response.headers,
            response.json(),
            error=response.error,
            now=now,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self.transport.close()
