"""Prompt recovery after a SIGKILL (SPEC §9): the users a killed ``worker`` held are sent again
within seconds of the restart, not after ``delivery.lease_s``; on SQLite because the one sender
cuts its predecessor's leases at start, on PostgreSQL because live workers reap a worker whose
heartbeat stopped."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.store.schema import outbox
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_crash_and_concurrency import start_worker, wait_drained
from tests.integration.test_delivery import REST_KEY, assert_braze_matches, run_rounds
from tests.support import dead_count

pytestmark = pytest.mark.slow

LEASE_S = 600.0
"""Far longer than the test may take: recovery must not wait for leases to run out."""


def recovery_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "recovery.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[braze]
allowed_custom_endpoints = ["http://127.0.0.1:"]
min_resend_interval_s = 0
timeout_s = 1
max_objects_per_request = 5
requests_per_second = 40
[delivery]
workers = 3
lease_s = {LEASE_S}
coalesce_s = 0
backoff_base_s = 0.02
backoff_cap_s = 0.2
poll_interval_s = 0.05
heartbeat_s = 0.2
worker_timeout_s = 1.0
[log]
level = "WARNING"
"""
    )
    return path


def long_leases(engine) -> int:
    """Users leased for (nearly) all of ``LEASE_S`` from now."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(outbox)
            .where(outbox.c.claimed_until > time.time() + LEASE_S / 2)
        ).scalar_one()


def test_users_of_a_killed_worker_are_sent_again_within_seconds(
    make_runtime, tmp_path, auth_headers
):
    runtime = make_runtime(**{"delivery.coalesce_s": 0})
    client = create_app(runtime=runtime).test_client()
    config = recovery_config(tmp_path, runtime.settings.get("database.url"))
    mode = "array+string+per_segment"
    with FakeBraze(api_keys={REST_KEY}, delay_s=0.05, seed=3) as braze:
        model = run_rounds(client, auth_headers, braze, mode, users=600, rounds=1, seed=7)
        first = start_worker(config, tmp_path, 1)
        deadline = time.monotonic() + 60
        while braze.stats()["requests"] < 5:
            assert time.monotonic() < deadline, "the first worker never sent"
            assert first.poll() is None
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        held = long_leases(runtime.engine)
        assert held > 0  # the kill left users leased for LEASE_S

        second = start_worker(config, tmp_path, 2)
        try:
            # Without prompt recovery these users would wait LEASE_S (10 minutes).
            wait_drained(runtime.engine, [second], timeout_s=60)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
        assert second.returncode == 0
        assert dead_count(runtime.engine) == 0
        assert_braze_matches(braze, mode, model)
        assert braze.violations == []
