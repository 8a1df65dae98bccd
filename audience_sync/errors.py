"""The one exception tree of audience-sync.

    AudienceSyncError
    ├── ConfigValidationError        configuration: every problem at once, in ``errors``
    ├── InvalidPayloadError          bad input from a caller (mapped to a 4xx)
    └── DeliveryError                talking to Braze or mParticle
        ├── RetriableDeliveryError   5xx, timeouts, dropped connections: try again later
        ├── RateLimitedError         429: pause the key until ``retry_at``; not an attempt
        └── FatalDeliveryError       401/403/404/415 and other refusals: do not retry as-is

Adapters translate third-party exceptions (``requests.*``, ``sqlalchemy.*``) into this tree with
``raise ... from exc`` so the rooms above them never catch a library's exception.
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


class DeliveryError(AudienceSyncError):
    """A request to a vendor API did not succeed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RetriableDeliveryError(DeliveryError):
    """Transient failure (5xx, timeout, connection dropped): retry with backoff."""


class RateLimitedError(DeliveryError):
    """The vendor rate-limited us; ``retry_at`` is the epoch second to wait for."""

    def __init__(self, message: str, retry_at: float, status: int | None = 429) -> None:
        self.retry_at = retry_at
        super().__init__(message, status)


class FatalDeliveryError(DeliveryError):
    """The vendor refused the request in a way a retry of the same request cannot fix."""
