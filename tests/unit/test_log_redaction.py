"""Configured secrets are masked in every log line, even inside an exception's text."""

from __future__ import annotations

import io
import logging

import pytest

from audience_sync.logs import configure_logging
from audience_sync.settings import load_settings

SECRETS = {
    "admin.token": "admin-secret-123456",
    "firehose.tokens": ["firehose-secret-abcdef"],
    "currents.tokens": ["currents-secret-ghijkl"],
    "currents.feeds.ios.key": "feed-key-mnopqr",
    "currents.feeds.ios.secret": "feed-secret-stuvwx",
    "currents.feeds.ios.platform": "ios",
    "connections.42.restApiKey": "rest-key-yz0123",
}


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "text"])
def test_every_configured_secret_is_masked(json_lines, monkeypatch: pytest.MonkeyPatch):
    settings = load_settings(environ={}, overrides=SECRETS)
    values = settings.secret_values()
    assert len(values) == 6
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("INFO", json_lines=json_lines, secrets=values)
    log = logging.getLogger("test.redaction")
    try:
        for secret in values:
            log.info("saw %s", secret, extra={"action": "db_retry", "detail": secret})
            try:
                raise RuntimeError(f"connect failed with {secret}")
            except RuntimeError:
                log.exception("failed", extra={"action": "sender_error"})
    finally:
        configure_logging("INFO", json_lines=json_lines)
    text = stream.getvalue()
    assert text.count("***") >= 3 * len(values)
    for secret in values:
        assert secret not in text
