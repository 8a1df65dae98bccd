"""The SQLite writer gate (store/writer_gate.py): one writer at a time, and a waiting intake
writer goes before waiting senders, within a process and across processes (lock files)."""

from __future__ import annotations

import threading
import time

import pytest

from audience_sync.store.writer_gate import PriorityLock, _Gate


def _wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _waiters(lock: PriorityLock) -> int:
    # Threads blocked in acquire(), priority and ordinary.
    return len(lock._priority._waiters) + len(lock._ordinary._waiters)


@pytest.mark.parametrize("first", ["ordinary", "priority"])
def test_a_waiting_priority_holder_goes_before_waiting_ordinary_ones(first):
    lock = PriorityLock()
    lock.acquire(priority=False)
    order: list[str] = []

    def take(name: str, priority: bool) -> None:
        lock.acquire(priority=priority)
        order.append(name)
        lock.release()

    names = ["ordinary", "priority"] if first == "ordinary" else ["priority", "ordinary"]
    threads = []
    for n, name in enumerate(names, start=1):
        thread = threading.Thread(target=take, args=(name, name == "priority"))
        thread.start()
        threads.append(thread)
        _wait_until(lambda n=n: _waiters(lock) == n)
    lock.release()
    for thread in threads:
        thread.join(30)
    assert order == ["priority", "ordinary"]


def test_many_holders_of_both_kinds_each_get_the_lock_alone_and_none_is_left_waiting():
    # A release wakes one waiter: a lost wake-up would leave a thread blocked here.
    lock = PriorityLock()
    inside = 0
    most_inside = 0
    taken = 0

    def take(priority: bool) -> None:
        nonlocal inside, most_inside, taken
        for _ in range(200):
            lock.acquire(priority=priority)
            inside += 1
            most_inside = max(most_inside, inside)
            taken += 1
            time.sleep(0)
            inside -= 1
            lock.release()

    threads = [threading.Thread(target=take, args=(n % 3 == 0,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert (taken, most_inside, _waiters(lock)) == (8 * 200, 1, 0)


def test_a_sender_waits_while_an_intake_writer_of_another_process_waits(tmp_path):
    # Two gates on one file stand for two processes: flock locks of separate open files
    # conflict exactly as between processes.
    database = str(tmp_path / "db.sqlite")
    intake_gate, sender_gate = _Gate(database), _Gate(database)
    events: list[str] = []
    # Another thread of the intake's process is writing: the intake waits in its process,
    # with the database's writer lock free.
    intake_gate.lock.acquire(priority=False)

    def intake() -> None:
        with intake_gate.hold(priority=True):
            events.append("intake")

    def sender() -> None:
        with sender_gate.hold(priority=False):
            events.append("sender")

    intake_thread = threading.Thread(target=intake)
    intake_thread.start()
    _wait_until(lambda: _waiters(intake_gate.lock) == 1)
    sender_thread = threading.Thread(target=sender)
    sender_thread.start()
    sender_thread.join(0.3)
    assert events == []  # the sender holds back for the announced intake writer
    intake_gate.lock.release()
    for thread in (intake_thread, sender_thread):
        thread.join(30)
    assert events == ["intake", "sender"]


def test_one_writer_at_a_time_across_gates(tmp_path):
    database = str(tmp_path / "db.sqlite")
    gates = [_Gate(database) for _ in range(3)]
    inside = 0
    most = 0
    guard = threading.Lock()

    def work(gate: _Gate, priority: bool) -> None:
        nonlocal inside, most
        for _ in range(50):
            with gate.hold(priority=priority):
                with guard:
                    inside += 1
                    most = max(most, inside)
                with guard:
                    inside -= 1

    threads = [
        threading.Thread(target=work, args=(gate, n % 2 == 0)) for n, gate in enumerate(gates * 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most == 1


def test_a_long_writer_can_see_an_intake_writer_waiting_in_another_process(tmp_path):
    """What the journal applier asks between two parts of its transaction."""
    database = str(tmp_path / "db.sqlite")
    intake_gate, applier_gate = _Gate(database), _Gate(database)
    applier_files = applier_gate.files()
    assert not applier_files.priority_writer_waiting()
    held, release = threading.Event(), threading.Event()

    def applier() -> None:
        with applier_gate.hold(priority=False):
            held.set()
            release.wait(30)

    def intake() -> None:
        with intake_gate.hold(priority=True):
            pass

    writer = threading.Thread(target=applier)
    writer.start()
    held.wait(30)
    assert not applier_files.priority_writer_waiting()  # nobody waits yet
    waiting = threading.Thread(target=intake)
    waiting.start()
    _wait_until(applier_files.priority_writer_waiting)
    release.set()
    writer.join(30)
    waiting.join(30)
    assert not applier_files.priority_writer_waiting()  # the intake wrote and left


def test_a_long_writer_sees_a_waiting_intake_writer_of_its_own_process(tmp_path):
    gate = _Gate(None)  # in-memory database: the in-process lock only
    gate.lock.acquire(priority=False)
    assert not gate.lock.priority_waiting
    waiting = threading.Thread(
        target=lambda: (gate.lock.acquire(priority=True), gate.lock.release())
    )
    waiting.start()
    _wait_until(lambda: gate.lock.priority_waiting)
    gate.lock.release()
    waiting.join(30)
    assert not gate.lock.priority_waiting
