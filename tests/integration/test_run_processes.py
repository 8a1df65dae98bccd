"""`audience-sync run` sends from a child process (SPEC §1, §9): one command and one log, a
killed sender process is restarted, SIGTERM stops both, and a killed `run` takes its sender
process with it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from audience_sync.sender_process import ORPHAN_CHECK_S

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses /proc and POSIX signals")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _actions(log_path):
    lines = []
    for line in log_path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


def _wait_for(predicate, log_path, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out\n" + log_path.read_text())


def _sender_pids(log_path):
    return [
        line["pid"] for line in _actions(log_path) if line.get("action") == "sender_process_started"
    ]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is not alive
        return fh.read().split(") ")[1][0] != "Z"


@pytest.fixture
def run_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
    env |= {
        "AUDIENCE_SYNC_DATABASE__URL": f"sqlite:///{tmp_path}/run.db",
        "AUDIENCE_SYNC_SERVER__PORT": str(_free_port()),
        "AUDIENCE_SYNC_FIREHOSE__TOKENS": "t",
    }
    cmd = [sys.executable, "-m", "audience_sync"]
    subprocess.run([*cmd, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    return env, cmd


def _start(run_env, log_path):
    env, cmd = run_env
    with log_path.open("w") as log:
        proc = subprocess.Popen([*cmd, "run"], env=env, stderr=log)
    port = env["AUDIENCE_SYNC_SERVER__PORT"]

    def ready():
        assert proc.poll() is None, log_path.read_text()
        try:
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).ok
        except requests.ConnectionError:
            return False

    _wait_for(ready, log_path)
    _wait_for(lambda: _sender_pids(log_path), log_path)
    return proc


def test_a_killed_sender_process_is_restarted_and_sigterm_stops_both(run_env, tmp_path):
    log_path = tmp_path / "run.log"
    proc = _start(run_env, log_path)
    try:
        (first,) = _sender_pids(log_path)
        assert first != proc.pid
        _wait_for(
            lambda: any(a.get("action") == "senders_started" for a in _actions(log_path)),
            log_path,
        )
        os.kill(first, signal.SIGKILL)
        second = _wait_for(lambda: _sender_pids(log_path)[1:], log_path)[0]
        assert second != first and _alive(second)
        assert any(a.get("action") == "sender_process_died" for a in _actions(log_path))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log_path.read_text()
    assert not _alive(second)
    actions = [a.get("action") for a in _actions(log_path)]
    assert "process_stopped" in actions


def test_a_killed_run_takes_its_children_with_it_at_once(run_env, tmp_path):
    """Linux kills the children with the parent (PR_SET_PDEATHSIG): none of them keeps writing
    beside the children of the `run` a supervisor starts next."""
    log_path = tmp_path / "run.log"
    proc = _start(run_env, log_path)
    children = [*_sender_pids(log_path), *_wait_for(lambda: _applier_pids(log_path), log_path)]
    proc.kill()
    proc.wait(timeout=10)
    started = time.monotonic()
    _wait_for(lambda: not any(_alive(pid) for pid in children), log_path, timeout=60)
    assert time.monotonic() - started < ORPHAN_CHECK_S  # sooner than the orphan check


def _applier_pids(log_path):
    return [
        line["pid"]
        for line in _actions(log_path)
        if line.get("action") == "applier_process_started"
    ]


def _membership_count(env) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(env["AUDIENCE_SYNC_DATABASE__URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM memberships")).scalar_one()
    finally:
        engine.dispose()


def test_the_journal_applier_has_its_own_process_and_a_killed_one_is_replaced(run_env, tmp_path):
    """Acknowledged changes are applied by run's applier child, also after it was SIGKILLed."""
    from audience_sync.firehose import testing as ft

    env, _ = run_env
    url = f"http://127.0.0.1:{env['AUDIENCE_SYNC_SERVER__PORT']}/firehose"
    headers = {"Authorization": "Token t"}
    log_path = tmp_path / "run.log"
    proc = _start(run_env, log_path)
    try:
        (first,) = _wait_for(lambda: _applier_pids(log_path), log_path)
        assert first not in (proc.pid, *_sender_pids(log_path))
        body = ft.membership_request(9, [ft.profile("u1", [ft.audience_change(1)])])
        assert requests.post(url, json=body, headers=headers, timeout=10).ok
        _wait_for(lambda: _membership_count(env) == 1, log_path)

        os.kill(first, signal.SIGKILL)
        second = _wait_for(lambda: _applier_pids(log_path)[1:], log_path)[0]
        assert _alive(second)
        body = ft.membership_request(9, [ft.profile("u2", [ft.audience_change(1)])])
        assert requests.post(url, json=body, headers=headers, timeout=10).ok
        _wait_for(lambda: _membership_count(env) == 2, log_path)
        assert any(a.get("action") == "applier_process_died" for a in _actions(log_path))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log_path.read_text()
    assert not _alive(second)


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[16])


def test_a_worker_yields_the_cpu_to_serve_by_its_niceness(run_env, tmp_path):
    """`worker` lowers its own priority by delivery.worker_niceness (a `serve` on the same
    machine answers first), as `run` does for its children."""
    env, cmd = run_env
    log_path = tmp_path / "worker.log"
    env = env | {"AUDIENCE_SYNC_DELIVERY__WORKER_NICENESS": "7"}
    with log_path.open("w") as log:
        proc = subprocess.Popen([*cmd, "worker"], env=env, stderr=log)
    try:
        _wait_for(
            lambda: any(a.get("action") == "senders_started" for a in _actions(log_path)),
            log_path,
        )
        assert _nice(proc.pid) == _nice(os.getpid()) + 7
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
