"""The audience-sync command line, as an operator runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import requests
import sqlalchemy as sa
from click.testing import CliRunner

from audience_sync.cli import main
from audience_sync.core.states import OutboxState
from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import head_revision


def test_config_check_reports_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nport = "eighty"\n[braze]\narray_write = "sometimes"\nnope = 1\n')
    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])
    assert result.exit_code == 2
    for key in ("server.port", "braze.array_write", "braze.nope"):
        assert key in result.output


def test_config_check_masks_secrets(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(
        '[firehose]\ntokens = ["very-secret-token"]\n[connections.42]\nrestApiKey = "rk-123"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output
    assert "very-secret-token" not in result.output
    assert "rk-123" not in result.output


def test_config_check_names_a_feed_whose_secret_cannot_be_sent_without_showing_it(tmp_path):
    path = tmp_path / "feeds.toml"
    path.write_text(
        '[currents.feeds.ios]\nkey = "us1-k"\nsecret = "hidden-value\\n"\nplatform = "ios"\n'
        '[currents.feeds.web]\nkey = "us1-k:x"\nsecret = "ok"\nplatform = "web"\n'
    )
    result = CliRunner().invoke(main, ["--config", str(path), "config", "check"])
    assert result.exit_code == 2
    assert "currents.feeds.ios.secret" in result.output
    assert "currents.feeds.web.key" in result.output
    assert "hidden-value" not in result.output
    assert "us1-k:x" not in result.output


def test_db_upgrade_creates_the_schema_and_is_repeatable(tmp_path):
    env = {"AUDIENCE_SYNC_DATABASE__URL": f"sqlite:///{tmp_path}/cli.db"}
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade"], env=env)
        assert result.exit_code == 0, result.output
        assert f"database at revision {head_revision(sa.create_engine('sqlite://'))}" in (
            result.output
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_serves_until_sigterm_and_refuses_an_unmigrated_database(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    env |= {
        "AUDIENCE_SYNC_DATABASE__URL": f"sqlite:///{tmp_path}/run.db",
        "AUDIENCE_SYNC_SERVER__PORT": str(port),
        "AUDIENCE_SYNC_FIREHOSE__TOKENS": "t",
    }
    cmd = [sys.executable, "-m", "audience_sync"]
    refused = subprocess.run([*cmd, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "db upgrade" in refused.stderr

    subprocess.run([*cmd, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([*cmd, "run"], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 90  # generous: CI machines can be busy
        while True:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "server did not start\n" + log_path.read_text()
                time.sleep(0.1)
        assert ready.json() == {"status": "ok"}
        answer = requests.post(
            f"http://127.0.0.1:{port}/firehose",
            json={"type": "module_registration_request", "id": "r1"},
            timeout=10,
        )
        assert answer.json()["type"] == "module_registration_response"
        # The senders start in run's child process, shortly after the server.
        while '"action": "senders_started"' not in log_path.read_text():
            assert time.monotonic() < deadline, "senders did not start\n" + log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    assert '"action": "process_started"' in stderr
    assert '"action": "senders_started"' in stderr
    assert '"action": "scheduler_started"' in stderr
    assert '"action": "process_stopped"' in stderr


def test_replay_requeues_dead_letters(tmp_path):
    import sqlalchemy as sa

    from audience_sync.store.migrate import upgrade
    from audience_sync.store.schema import outbox, workspaces

    url = f"sqlite:///{tmp_path}/replay.db"
    engine = create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            workspaces.insert().values(id=1, endpoint="e", key_fingerprint="f", created_at=0)
        )
        conn.execute(
            outbox.insert(),
            [
                {
                    "workspace_id": 1,
                    "external_id": f"u{i}",
                    "state": state,
                    "generation": 1,
                    "due_at": 0,
                    "attempts": 12,
                    "enqueued_at": 0,
                }
                for i, state in enumerate([OutboxState.DEAD, OutboxState.DEAD, OutboxState.PENDING])
            ],
        )
    result = CliRunner().invoke(main, ["replay"], env={"AUDIENCE_SYNC_DATABASE__URL": url})
    assert result.exit_code == 0, result.output
    assert "re-queued 2 dead-lettered user(s)" in result.output
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.state, outbox.c.attempts)).all()
    assert sorted(rows) == [
        (OutboxState.PENDING, 0),
        (OutboxState.PENDING, 0),
        (OutboxState.PENDING, 12),
    ]
