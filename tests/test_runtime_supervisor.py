"""The supervisor's restart policy, with scripted processes: restart with backoff, give up on a crash loop."""

from __future__ import annotations

import itertools
import threading
import time

from runtime_fixtures import until

from dualhrq.runtime.supervisor import RestartPolicy, Supervisor


class FakeProcess:
    _pids = itertools.count(100)

    def __init__(self) -> None:
        self.pid, self.exitcode, self.alive = next(self._pids), None, True

    def is_alive(self) -> bool:
        return self.alive

    def die(self, code: int = -9) -> None:
        self.alive, self.exitcode = False, code


def _watch(supervisor: Supervisor) -> tuple[threading.Event, list]:
    stop, result = threading.Event(), []
    threading.Thread(target=lambda: result.append(supervisor.watch(stop, poll_s=0.005)), daemon=True).start()
    return stop, result




def test_a_dead_worker_is_reported_and_restarted_in_its_slot_after_a_growing_delay():
    lost: list[str] = []
    policy = RestartPolicy(max_crashes=5, window_s=60, first_delay_s=0.05, max_delay_s=1)
    sup = Supervisor(["w0", "w1"], lambda slot: FakeProcess(), lost.append, policy)
    stop, result = _watch(sup)
    first, other = sup.procs["w0"], sup.procs["w1"]
    died = time.monotonic()
    first.die()
    until(lambda: sup.procs.get("w0") not in (None, first))
    assert time.monotonic() - died >= 0.05 and lost == ["w0"]
    second = sup.procs["w0"]
    died = time.monotonic()
    second.die()
    until(lambda: sup.procs.get("w0") not in (None, second))
    assert time.monotonic() - died >= 0.1  # doubled for the second crash within the window
    assert sup.procs["w1"] is other and sup.restarts == 2
    stop.set()
    until(lambda: result)
    assert result == [None]


def test_a_slot_that_keeps_crashing_ends_the_supervisor_with_the_reason():
    policy = RestartPolicy(max_crashes=3, window_s=60, first_delay_s=0.001, max_delay_s=0.001)
    sup = Supervisor(["w0"], lambda slot: FakeProcess(), lambda slot: None, policy)
    stop, result = _watch(sup)
    for _ in range(3):
        until(lambda: sup.procs.get("w0") is not None)
        proc = sup.procs["w0"]
        proc.die(3)
        until(lambda: sup.procs.get("w0") is not proc)
    until(lambda: result)
    assert "w0" in result[0] and "3 times" in result[0] and "exit code 3" in result[0] and "giving up" in result[0]
