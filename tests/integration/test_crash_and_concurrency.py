"""Real ``audience-sync worker`` processes: killed with SIGKILL mid-run, and two at once on
PostgreSQL. Braze must end equal to the desired state and never see a user twice in flight."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audience_sync import create_app
from audience_sync.runtime import Runtime
from tests.fakes.braze_server import FakeBraze
from tests.integration.test_delivery import (
    REST_KEY,
    assert_braze_matches,
    run_rounds,
)
from tests.support import dead_count, journal_count, pending_count

pytestmark = pytest.mark.slow


def worker_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[braze]
allowed_custom_endpoints = ["http://127.0.0.1:"]
min_resend_interval_s = 0
timeout_s = 1
[delivery]
workers = 3
lease_s = 2.5
coalesce_s = 0
backoff_base_s = 0.02
backoff_cap_s = 0.2
retry_window_s = 0
max_attempts = 100
poll_interval_s = 0.05
[log]
level = "WARNING"
"""
    )
    return path


def start_worker(config: Path, tmp_path: Path, n: int) -> subprocess.Popen:
    log = (tmp_path / f"worker-{n}.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "--config", str(config), "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def wait_drained(engine, procs, timeout_s=90.0):
    """Until every accepted Firehose message is applied (by the workers) and delivered."""
    deadline = time.monotonic() + timeout_s
    while journal_count(engine) or pending_count(engine):
        assert time.monotonic() < deadline, (
            f"{journal_count(engine)} messages to apply, {pending_count(engine)} users pending"
        )
        for p in procs:
            assert p.poll() is None, f"worker exited with {p.returncode}"
        time.sleep(0.1)


def test_sigkill_mid_run_loses_nothing_and_converges(make_settings, tmp_path, auth_headers):
    # The workers apply the journal too: a kill may land mid-apply as well as mid-send.
    runtime = Runtime.from_settings(
        make_settings(**{"delivery.coalesce_s": 0, "firehose.apply_in_request": False})
    )
    client = create_app(runtime=runtime).test_client()
    config = worker_config(tmp_path, runtime.settings.get("database.url"))
    mode = "array+string+per_segment"
    rng = random.Random(11)
    with FakeBraze(
        api_keys={REST_KEY},
        delay_s=0.003,
        rate_429=0.05,
        rate_5xx=0.05,
        rate_drop_after_apply=0.03,
        seed=5,
    ) as braze:
        model = run_rounds(client, auth_headers, braze, mode, users=800, rounds=2, seed=21)
        kills = 0
        for n in range(4):
            proc = start_worker(config, tmp_path, n)
            time.sleep(rng.uniform(0.8, 1.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(10)
            # More changes arrive while no worker runs.
            run_rounds(
                client, auth_headers, braze, mode, users=800, rounds=1, seed=100 + n, model=model
            )
        assert kills >= 3
        final = start_worker(config, tmp_path, 99)
        try:
            wait_drained(runtime.engine, [final])
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(20)
        assert final.returncode == 0
        assert dead_count(runtime.engine) == 0
        assert_braze_matches(braze, mode, model)
        assert braze.violations == []
    runtime.engine.dispose()


@pytest.mark.external_service
def test_two_workers_on_postgresql_never_have_a_user_in_flight_twice(
    tmp_path, auth_headers, request
):
    from tests.conftest import FIREHOSE_TOKEN  # noqa: F401  (same token as auth_headers)

    url = request.getfixturevalue("_pg_database")
    from audience_sync.settings import load_settings
    from audience_sync.store.engine import create_engine
    from tests.conftest import _truncate

    engine = create_engine(url)
    _truncate(engine)
    engine.dispose()
    settings = load_settings(
        environ={},
        overrides={
            "database.url": url,
            "firehose.tokens": [auth_headers["Authorization"].split()[1]],
            "braze.allowed_custom_endpoints": ["http://127.0.0.1:"],
            "delivery.coalesce_s": 0,
        },
    )
    runtime = Runtime.from_settings(settings)
    client = create_app(runtime=runtime).test_client()
    config = worker_config(tmp_path, url)
    mode = "array+string+per_segment"
    with FakeBraze(api_keys={REST_KEY}, delay_s=0.01, rate_5xx=0.05, seed=9) as braze:
        model = run_rounds(client, auth_headers, braze, mode, users=1500, rounds=1, seed=4)
        procs = [start_worker(config, tmp_path, n) for n in range(2)]
        try:
            run_rounds(client, auth_headers, braze, mode, users=1500, rounds=2, seed=8, model=model)
            wait_drained(runtime.engine, procs)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(20)
        assert braze.violations == []
        assert braze.stats()["max_in_flight"] >= 2  # they really ran side by side
        assert_braze_matches(braze, mode, model)
    runtime.engine.dispose()
