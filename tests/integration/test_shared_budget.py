"""A shared workspace's limits are shared (SPEC §5.2): two ``worker`` processes on PostgreSQL,
sending for two connections that share one REST key, stay within ``braze.requests_per_second``
together, as counted by the local Braze server."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from audience_sync import create_app
from audience_sync.runtime import Runtime
from audience_sync.settings import load_settings
from audience_sync.store.engine import create_engine
from tests.conftest import FIREHOSE_TOKEN, _truncate
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_crash_and_concurrency import start_worker, wait_drained
from tests.support import membership, post, profile, subscription

pytestmark = [pytest.mark.slow, pytest.mark.external_service]

REST_KEY = "shared-workspace-key"
RPS = 8
USERS = 64


def budget_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[braze]
allowed_custom_endpoints = ["http://127.0.0.1:"]
min_resend_interval_s = 0
timeout_s = 2
max_objects_per_request = 1
requests_per_second = {RPS}
[delivery]
workers = 2
lease_s = 30
coalesce_s = 0
poll_interval_s = 0.05
heartbeat_s = 0.2
worker_timeout_s = 1.0
[log]
level = "WARNING"
"""
    )
    return path


def test_two_workers_sharing_a_key_stay_within_its_budget_together(tmp_path, auth_headers, request):
    url = request.getfixturevalue("_pg_database")
    engine = create_engine(url)
    _truncate(engine)
    engine.dispose()
    settings = load_settings(
        environ={},
        overrides={
            "database.url": url,
            "firehose.tokens": [FIREHOSE_TOKEN],
            "braze.allowed_custom_endpoints": ["http://127.0.0.1:"],
            "delivery.coalesce_s": 0,
        },
    )
    runtime = Runtime.from_settings(settings)
    client = create_app(runtime=runtime).test_client()
    with FakeBraze(api_keys={REST_KEY}, delay_s=0.2) as braze:
        workspace = {
            "restApiKey": REST_KEY,
            "brazeInstance": "custom",
            "customRestEndpoint": braze.url,
        }
        for account_id in (1, 2):
            post(client, subscription(account_id, 10 + account_id, "A", **workspace), auth_headers)
            profiles = [
                profile(f"user-{account_id}-{n}", [(10 + account_id, "A", "add")])
                for n in range(USERS // 2)
            ]
            post(client, membership(account_id, profiles, **workspace), auth_headers)
        config = budget_config(tmp_path, url)
        procs = [start_worker(config, tmp_path, n) for n in range(2)]
        try:
            wait_drained(runtime.engine, procs, timeout_s=120)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(20)
        assert braze.stats()["requests"] >= USERS
        assert braze.stats()["max_in_flight"] >= 2  # both processes really sent
        assert braze.max_requests_in_window(1.0) <= RPS
    runtime.engine.dispose()
