"""What the HTTP adapters share: the one constant-time check of an ``Authorization`` header.

The Firehose endpoint takes ``Token <t>``, ``POST /currents`` and the admin API take
``Bearer <t>``; all three compare here, so the rules are the same everywhere: every configured
token is compared (no early exit, so the time taken does not tell which one nearly matched), an
empty configured token never matches, and the scheme is checked after the comparison.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from enum import StrEnum

from audience_sync.settings import Secret


class AuthScheme(StrEnum):
    """The ``Authorization`` schemes the endpoints accept (compared case-insensitively)."""

    TOKEN = "token"  # mParticle Firehose
    BEARER = "bearer"  # Braze Currents, the admin API


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def token_matches(presented: str, tokens: Iterable[Secret]) -> bool:
    """``presented`` equals one of ``tokens``, in constant time (every token compared)."""
    given = _bytes(presented)
    matched = False
    for token in tokens:
        expected = _bytes(token.reveal())
        matched |= bool(expected) & hmac.compare_digest(given, expected)
    return matched


def authorization_matches(header: str, scheme: AuthScheme, tokens: Iterable[Secret]) -> bool:
    """``header`` (an ``Authorization`` value) is ``<scheme> <one of tokens>``."""
    given_scheme, _, presented = header.strip().partition(" ")
    matched = token_matches(presented.strip(), tokens)
    return matched and given_scheme.lower() == scheme
