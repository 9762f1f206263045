"""The suite's parallel workers share the machine as support/machine_share says: a share of the cores each, and a
`whole_machine` test (a wall-clock budget decides its length) alone."""

from __future__ import annotations

import fcntl
import threading
import time

from support.machine_share import GIB, MachineLock, auto_workers, worker_share


def test_each_worker_gets_its_own_cores():
    assert [worker_share(i, 2, [0, 1]) for i in range(2)] == [{0}, {1}]
    assert [worker_share(i, 2, [0, 1, 2, 3]) for i in range(2)] == [{0, 2}, {1, 3}]
    assert worker_share(2, 3, [4, 5]) == {4}  # more workers than cores: one shares


def test_auto_workers_follow_cores_and_memory():
    assert auto_workers(2, 24 * GIB) == 2
    assert auto_workers(64, 16 * GIB) == 5
    assert auto_workers(64, 512 * GIB) == 8
    assert auto_workers(1, 1 * GIB) == 1


def test_a_whole_machine_test_waits_for_the_tests_in_flight_and_none_starts_before_it_ends(tmp_path):
    in_flight, whole, later = (MachineLock(tmp_path) for _ in range(3))
    events: list[str] = []

    def run_whole() -> None:
        with whole.alone():
            events.append("whole starts")
            time.sleep(0.2)
            events.append("whole ends")

    def run_later() -> None:
        with later.shared():
            events.append("later starts")

    with in_flight.shared():
        first = threading.Thread(target=run_whole)
        first.start()
        with open(tmp_path / "machine-gate.lock", "a+") as gate:  # wait until the whole-machine test holds the gate
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(gate, fcntl.LOCK_UN)
                    time.sleep(0.01)
                except BlockingIOError:
                    break
        second = threading.Thread(target=run_later)
        second.start()
        time.sleep(0.2)
        assert events == []  # the whole-machine test waits for the one in flight; the later one waits behind it
    first.join(10)
    second.join(10)
    assert events == ["whole starts", "whole ends", "later starts"]
