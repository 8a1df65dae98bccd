"""The one constant-time token check of the HTTP adapters (Firehose ``Token``, Currents and
admin ``Bearer``)."""

from __future__ import annotations

import pytest

from audience_sync.settings import Secret
from audience_sync.web import AuthScheme, authorization_matches, token_matches

TOKENS = [Secret("first-token"), Secret("second-token")]


@pytest.mark.parametrize(
    ("header", "scheme", "tokens", "expected"),
    [
        ("Token first-token", AuthScheme.TOKEN, TOKENS, True),
        ("Bearer second-token", AuthScheme.BEARER, TOKENS, True),
        ("bearer second-token", AuthScheme.BEARER, TOKENS, True),
        ("  Bearer   second-token  ", AuthScheme.BEARER, TOKENS, True),
        ("Bearer first-token", AuthScheme.TOKEN, TOKENS, False),
        ("Token first-token", AuthScheme.BEARER, TOKENS, False),
        ("Bearer first-tokenx", AuthScheme.BEARER, TOKENS, False),
        ("Bearer", AuthScheme.BEARER, TOKENS, False),
        ("", AuthScheme.BEARER, TOKENS, False),
        ("first-token", AuthScheme.TOKEN, TOKENS, False),
        ("Bearer ", AuthScheme.BEARER, [Secret("")], False),
        ("Bearer x", AuthScheme.BEARER, [], False),
        ("Bearer caf\udce9", AuthScheme.BEARER, [Secret("caf\udce9")], True),
    ],
    ids=[
        "token-scheme",
        "bearer-second-token",
        "scheme-case-insensitive",
        "spaces-around",
        "wrong-scheme-token",
        "wrong-scheme-bearer",
        "longer-token",
        "no-token",
        "no-header",
        "no-scheme",
        "empty-configured-never-matches",
        "none-configured",
        "undecodable-bytes",
    ],
)
def test_authorization_matches(header, scheme, tokens, expected):
    assert authorization_matches(header, scheme, tokens) is expected


@pytest.mark.parametrize(
    ("presented", "expected"),
    [("second-token", True), ("second", False), ("", False)],
    ids=["match", "prefix", "empty"],
)
def test_token_matches(presented, expected):
    assert token_matches(presented, TOKENS) is expected
