"""Fingerprints of Braze REST API keys: what logs, metrics and dry-run files may show of a key."""

from __future__ import annotations

import hashlib

FINGERPRINT_CHARS = 12
"""Hex characters of SHA-256 kept: enough to tell keys apart, useless to call Braze with."""


def fingerprint(api_key: str) -> str:
    """Return a short, stable, non-reversible label for ``api_key`` (``key:1a2b3c4d5e6f``)."""
    digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()
    return f"key:{digest[:FINGERPRINT_CHARS]}"
