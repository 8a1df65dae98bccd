"""Prompt recovery of Currents leases after a crash (SPEC §9): on SQLite ``run`` is the one
sending process, so at start it releases the leases its SIGKILLed predecessor held instead of
letting them wait out ``delivery.lease_s``; the events then arrive exactly once, in order."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import currents_batches
from tests.currents_support import CURRENTS_TOKEN, FEED_SECRETS, FEEDS, http_event
from tests.fakes.mparticle_server import FakeMParticle

pytestmark = pytest.mark.slow

LEASE_S = 120.0
"""The default lease: far longer than the recovery this test allows."""


def _config(tmp_path: Path, database_url: str, mparticle_url: str, port: int) -> Path:
    feeds = "".join(
        f'[currents.feeds.{name}]\nkey = "{f["key"]}"\nsecret = "{f["secret"]}"\n'
        f'platform = "{f["platform"]}"\n'
        for name, f in FEEDS.items()
    )
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[server]
port = {port}
[currents]
tokens = ["{CURRENTS_TOKEN}"]
mparticle_url = "{mparticle_url}"
allowed_mparticle_urls = ["http://127.0.0.1:"]
timeout_s = 60
[delivery]
lease_s = {LEASE_S}
poll_interval_s = 0.05
[log]
level = "WARNING"
{feeds}"""
    )
    return path


def _start(config: Path, tmp_path: Path) -> subprocess.Popen:
    log = (tmp_path / "run.log").open("a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "--config", str(config), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait(condition, proc: subprocess.Popen, tmp_path: Path, *, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-2000:]
        time.sleep(0.05)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigkilled_run_mid_delivery_is_resumed_at_restart_exactly_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path}/run.db"
    engine = create_engine(url)
    upgrade(engine)
    events = [http_event(user=f"u{n % 3}") for n in range(30)]
    # Requests hang (then drop unrecorded): the batches are leased and in flight at the kill.
    with FakeMParticle(feeds=FEED_SECRETS, hang_s=30) as mp:
        config = _config(tmp_path, url, mp.url, port)
        proc = _start(config, tmp_path)
        try:

            def accepted() -> bool:
                try:
                    answer = requests.post(
                        f"http://127.0.0.1:{port}/currents",
                        json={"events": events},
                        headers={"Authorization": f"Bearer {CURRENTS_TOKEN}"},
                        timeout=5,
                    )
                except requests.ConnectionError:
                    return False
                assert answer.status_code == 200, answer.text
                return True

            _wait(accepted, proc, tmp_path, within_s=60)
            _wait(lambda: mp.hung > 0, proc, tmp_path, within_s=60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with engine.connect() as conn:
            leased_until = conn.execute(
                sa.select(sa.func.max(currents_batches.c.claimed_until))
            ).scalar()
        assert leased_until is not None and leased_until > time.time() + LEASE_S / 2

        mp.configure(hang_s=0.0)
        restarted = time.monotonic()
        proc = _start(config, tmp_path)
        try:
            # Within seconds of the restart, not after the 120 s lease.
            _wait(
                lambda: sum(mp.message_ids().values()) >= len(events),
                proc,
                tmp_path,
                within_s=LEASE_S / 4,
            )
            recovered_s = time.monotonic() - restarted
            # Delivery can beat the HTTP server's start: stop it once it is up (signals set).
            _wait(lambda: _listening(port), proc, tmp_path, within_s=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        assert proc.returncode == 0
    assert recovered_s < LEASE_S / 4
    assert sorted(mp.message_ids().elements()) == sorted(e["id"] for e in events)  # once each
    assert mp.delivered_twice() == [] and mp.rejected == []
    order = mp.order_by_user()
    for user in ("u0", "u1", "u2"):
        assert order[user] == [e["id"] for e in events if e["user"]["external_user_id"] == user]
    engine.dispose()
