"""A small engine state for the operator tests: one connection, three audiences, users
delivered to a local Braze-compatible server, and the secrets an operator must never see."""

from __future__ import annotations

from audience_sync.braze.client import BrazeClient
from audience_sync.braze.ratelimit import RateBudget
from audience_sync.delivery.braze_sender import BrazeSender
from tests.conftest import FIREHOSE_TOKEN
from tests.support import drain, membership, post, profile, subscription

ACCOUNT = 7001
ADMIN_TOKEN = "admin-token-Zq81-do-not-leak"
REST_KEY = "rest-key-Hx44-do-not-leak"
CURRENTS_TOKEN = "currents-token-Pp09-do-not-leak"
FEED_KEY = "feed-key-Kk12-do-not-leak"
FEED_SECRET = "feed-secret-Ss34-do-not-leak"
BLACKLISTED = ("user-0", "user-1")
"""Users the fake Braze refuses permanently: they become dead letters."""
SECRETS = (ADMIN_TOKEN, REST_KEY, CURRENTS_TOKEN, FEED_KEY, FEED_SECRET, FIREHOSE_TOKEN)
AUDIENCES = {11036: "Ibiza Dreamers", 11037: "Aspiring Athenians", 11038: "Night Owls"}
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FIREHOSE = {"Authorization": f"Token {FIREHOSE_TOKEN}"}

ADMIN_SETTINGS = {
    "admin.token": ADMIN_TOKEN,
    "currents.tokens": [CURRENTS_TOKEN],
    "currents.feeds.web.key": FEED_KEY,
    "currents.feeds.web.secret": FEED_SECRET,
    "currents.feeds.web.platform": "web",
    # A local override of the REST key (SPEC §2): shown masked, like mParticle's copy.
    f"connections.{ACCOUNT}.restApiKey": REST_KEY,
    "delivery.coalesce_s": 0,
    "braze.min_resend_interval_s": 0,
}


def connection_settings(braze_url: str) -> dict[str, str]:
    return {
        "restApiKey": REST_KEY,
        "brazeInstance": "custom",
        "customRestEndpoint": braze_url,
        "sendSegmentsAs": "array+string+per_segment",
    }


def populate(client, braze_url: str, *, users: int = 20, account_id: int = ACCOUNT) -> None:
    """Subscribe the audiences and post memberships: user-n is in audience n % 3 (and 11036)."""
    settings = connection_settings(braze_url)
    for audience_id, name in AUDIENCES.items():
        post(client, subscription(account_id, audience_id, name, **settings), FIREHOSE)
    ids = list(AUDIENCES)
    profiles = [
        profile(
            f"user-{n}",
            [
                (ids[0], AUDIENCES[ids[0]], "add"),
                (ids[1 + n % 2], AUDIENCES[ids[1 + n % 2]], "add"),
            ],
            email=f"user-{n}@example.com",
        )
        for n in range(users)
    ]
    post(client, membership(account_id, profiles, **settings), FIREHOSE)


def deliver(runtime) -> None:
    """Send every pending user with a real sender and HTTP client."""
    sender = BrazeSender(
        engine=runtime.engine,
        settings=runtime.settings,
        client=BrazeClient(timeout_s=5),
        budget=RateBudget(runtime.settings.get("braze.requests_per_second")),
        worker_id="admin-test",
    )
    drain(sender, runtime.engine)
