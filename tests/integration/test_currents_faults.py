"""Currents under faults with real processes (SPEC §10 faults): 429s, 5xx, dropped connections,
and SIGKILL of the ``worker`` and of ``currents import`` mid-run. Every event must be delivered
exactly once (by ``source_message_id``, across distinct batches) or dead-lettered with a reason,
in arrival order per user, and no file imported twice."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync.runtime import Runtime
from audience_sync.store import currents as queue
from audience_sync.store.schema import currents_files
from tests.currents_support import FEED_SECRETS, FEEDS, avro_samples, copy_sample
from tests.fakes.mparticle_server import FakeMParticle

pytestmark = pytest.mark.slow

FILES = 16
EVENTS_PER_FILE = 300
USERS = 37


def config_file(tmp_path: Path, database_url: str, mparticle_url: str) -> Path:
    feeds = "".join(
        f'[currents.feeds.{name}]\nkey = "{f["key"]}"\nsecret = "{f["secret"]}"\n'
        f'platform = "{f["platform"]}"\n'
        for name, f in FEEDS.items()
    )
    path = tmp_path / "worker.toml"
    path.write_text(
        f"""
[database]
url = "{database_url}"
[currents]
mparticle_url = "{mparticle_url}"
allowed_mparticle_urls = ["http://127.0.0.1:"]
batches_per_second = 100000
timeout_s = 1
probe_interval_s = 0.2
[braze]
timeout_s = 0.4
[delivery]
lease_s = 1.5
backoff_base_s = 0.02
backoff_cap_s = 0.2
max_attempts = 1000
poll_interval_s = 0.05
[log]
level = "WARNING"
{feeds}"""
    )
    return path


def start(config: Path, tmp_path: Path, name: str, *args: str) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("a")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    return subprocess.Popen(
        [sys.executable, "-m", "audience_sync", "--config", str(config), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def handles_sigterm(proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Wait until ``proc`` has installed its SIGTERM handler (Linux: ``SigCgt`` in
    ``/proc/<pid>/status``), so a SIGTERM tests its shutdown, not its start-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(
            next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
        )
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.02)
    raise AssertionError("the process never got ready for SIGTERM")


def imported_files(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(currents_files)).scalar_one()


def live(engine) -> int:
    with engine.connect() as conn:
        return queue.backlog(conn)


def test_faults_and_sigkill_deliver_every_event_exactly_once(make_settings, tmp_path):
    runtime = Runtime.from_settings(make_settings())
    url = runtime.settings.get("database.url")
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Open")
    inbox = tmp_path / "inbox"
    ids: list[str] = []
    user_of: dict[str, str] = {}
    users = [f"user-{n}" for n in range(USERS)]
    for n in range(FILES):
        folder = (
            inbox
            / "event_type=users.messages.email.Open"
            / f"date=2026-12-{1 + n // 24:02d}-{n % 24:02d}"
        )
        file_ids = copy_sample(
            sample,
            folder / f"part-{n:03d}.avro",
            count=EVENTS_PER_FILE,
            codec="deflate" if n % 2 else "snappy",
            users=users,
        )
        user_of.update((i, users[k % USERS]) for k, i in enumerate(file_ids))
        ids += file_ids
    rng = random.Random(5)
    with FakeMParticle(
        feeds=FEED_SECRETS,
        rate_429=0.1,
        rate_5xx=0.05,
        rate_drop=0.05,
        rate_drop_after=0.05,
        retry_after_s=0.05,
        seed=3,
    ) as mp:
        config = config_file(tmp_path, url, mp.url)
        importer = start(config, tmp_path, "import", "currents", "import", str(inbox))
        kills = 0
        for n in range(3):
            worker = start(config, tmp_path, "worker", "worker")
            if n == 0:
                deadline = time.monotonic() + 60
                while imported_files(runtime.engine) < 3:
                    assert time.monotonic() < deadline and importer.poll() is None
                    time.sleep(0.005)
                importer.send_signal(signal.SIGKILL)  # in the middle of an import
                assert importer.wait(10) == -signal.SIGKILL
                assert 3 <= imported_files(runtime.engine) < FILES
                importer = start(config, tmp_path, "import", "currents", "import", str(inbox))
            time.sleep(rng.uniform(0.8, 1.5))
            if worker.poll() is None:
                worker.send_signal(signal.SIGKILL)
                kills += 1
            worker.wait(10)
        assert kills >= 2
        importer.wait(120)
        rerun = start(config, tmp_path, "import", "currents", "import", str(inbox))
        assert rerun.wait(120) in (0, None)
        worker = start(config, tmp_path, "worker", "worker")
        try:
            handles_sigterm(worker)  # the queue may be empty already: stop it once it has started
            deadline = time.monotonic() + 120
            while live(runtime.engine):
                assert time.monotonic() < deadline, f"{live(runtime.engine)} not delivered"
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
                time.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        assert worker.returncode == 0

        with runtime.engine.connect() as conn:
            dead = {d["event_id"]: d["reason"] for d in queue.dead_letters(conn, limit=None)}
            files = conn.execute(sa.select(currents_files.c.path)).scalars().all()
        assert len(files) == len(set(files)) == FILES  # each file once
        assert all(dead.values())  # every dead letter has a reason
        delivered = mp.message_ids()
        assert mp.delivered_twice() == []  # exactly once across distinct batches
        assert set(delivered) | set(dead) == set(ids)
        assert not set(delivered) & set(dead)
        assert mp.rejected == []
        order = mp.order_by_user()
        for user in users:
            expected = [i for i in ids if user_of[i] == user and i in delivered]
            assert order.get(user, []) == expected
        assert mp.statuses[429] and mp.statuses[503] and mp.statuses["drop"]
    runtime.engine.dispose()


def test_run_takes_currents_over_http_and_delivers_them(tmp_path):
    """The real ``audience-sync run``: waitress in front, the mParticle sender started."""
    import requests

    from audience_sync.store.engine import create_engine
    from audience_sync.store.migrate import upgrade
    from tests.currents_support import CURRENTS_TOKEN, http_event

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"sqlite:///{tmp_path}/run.db"
    engine = create_engine(url)
    upgrade(engine)
    with FakeMParticle(feeds=FEED_SECRETS) as mp:
        config = config_file(tmp_path, url, mp.url)
        config.write_text(config.read_text() + f"[server]\nport = {port}\n")
        env_config = tmp_path / "run.toml"
        env_config.write_text(
            config.read_text().replace(
                "[currents]\n", f'[currents]\ntokens = ["{CURRENTS_TOKEN}"]\n', 1
            )
        )
        proc = start(env_config, tmp_path, "run", "run")
        try:
            deadline = time.monotonic() + 60
            events = [http_event(user=f"u{n % 3}") for n in range(30)]
            while True:
                try:
                    answer = requests.post(
                        f"http://127.0.0.1:{port}/currents",
                        json={"events": events},
                        headers={"Authorization": f"Bearer {CURRENTS_TOKEN}"},
                        timeout=5,
                    )
                    break
                except requests.ConnectionError:
                    assert proc.poll() is None, (tmp_path / "run.log").read_text()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert answer.status_code == 200, answer.text
            too_big = requests.post(
                f"http://127.0.0.1:{port}/currents",
                data=b"x" * 6_000_000,
                headers={"Authorization": f"Bearer {CURRENTS_TOKEN}"},
                timeout=30,
            )
            assert too_big.status_code == 413 and too_big.json()["code"] == 413
            while sum(mp.message_ids().values()) < 30:
                assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        assert proc.returncode == 0
        assert sorted(mp.message_ids()) == sorted(e["id"] for e in events)
        assert mp.rejected == []
    engine.dispose()
