"""The one exception tree of audience-sync.

    AudienceSyncError
    ├── ConfigValidationError        configuration: every problem at once, in ``errors``
    └── InvalidPayloadError          bad input from a caller (mapped to a 4xx)

Vendor outcomes are values, not exceptions: the Braze client returns a ``TrackResponse`` for
every answer, timeout or dropped connection (``requests`` exceptions never leave it), and
:mod:`audience_sync.braze.outcomes` classifies it into a ``TrackOutcome`` that the sender acts on
(retry, pause, split, dead-letter). The database's transient aborts are retried by the one
transaction runner (:mod:`audience_sync.store.transactions`); anything else from SQLAlchemy is a
fault the sender loop logs and survives (its leases protect the work). One packing signal stays
an exception: ``braze.requests.ObjectTooLargeError`` (a ``ValueError``), which the Braze sender
catches to dead-letter that one user.
"""

from __future__ import annotations


class AudienceSyncError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigValidationError(AudienceSyncError):
    """The configuration has one or more problems; ``errors`` lists each with its key."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid configuration:\n" + "\n".join(f"- {e}" for e in self.errors))


class InvalidPayloadError(AudienceSyncError):
    """A request body that cannot be accepted; ``errors`` maps field paths to messages."""

    def __init__(
        self, message: str, errors: dict[str, object] | None = None, status: int = 400
    ) -> None:
        self.message = message
        self.errors = errors or {}
        self.status = status
        super().__init__(message)
