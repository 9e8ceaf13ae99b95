"""`serve --workers N`: a broker and N local worker processes, each restarted when it dies.

A worker that exits while the server is not stopping is reported to the broker at once (which answers the
requests it held, see dualhrq.runtime.broker) and started again in the same slot, so it takes back that
slot's instruments. Restarts back off; a slot that keeps crashing (RestartPolicy.max_crashes within
window_s) ends the server with exit code 1 and the reason in the log: a bundle or machine that kills every
worker is not served on in a loop.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dualhrq.config import ServeConfig
from dualhrq.runtime.backend import BrokerAddresses
from dualhrq.runtime.broker import Broker
from dualhrq.runtime.workers import worker_main
from dualhrq.runtime.workers_http import serve_http, worker_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    max_crashes: int = 5  # of one slot within window_s: then give up
    window_s: float = 60.0
    first_delay_s: float = 0.2  # before the first restart; doubled for each further crash in the window
    max_delay_s: float = 10.0

    def delay(self, recent_crashes: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** (recent_crashes - 1))


class Supervisor:
    """Keeps one process per slot alive: `spawn(slot)` starts one, `on_lost(slot)` hears of each death."""

    def __init__(self, slots: list[str], spawn: Callable[[str], mp.process.BaseProcess],
                 on_lost: Callable[[str], None], policy: RestartPolicy = RestartPolicy()) -> None:
        self.procs = {slot: spawn(slot) for slot in slots}
        self.restarts = 0
        self._spawn, self._on_lost, self._policy = spawn, on_lost, policy
        self._crashes: dict[str, collections.deque[float]] = {slot: collections.deque() for slot in slots}
        self._due: dict[str, float] = {}  # slot -> when its replacement starts

    def watch(self, stop: threading.Event, poll_s: float = 0.1) -> str | None:
        """Until `stop` is set (None) or a slot crashes too often (the reason)."""
        while not stop.wait(poll_s):
            now = time.monotonic()
            for slot, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                del self.procs[slot]
                self._on_lost(slot)
                crashes = self._crashes[slot]
                crashes.append(now)
                while crashes[0] < now - self._policy.window_s:
                    crashes.popleft()
                if len(crashes) >= self._policy.max_crashes:
                    return (f"worker {slot} exited {len(crashes)} times within {self._policy.window_s:g} s "
                            f"(last exit code {proc.exitcode}); giving up")
                delay = self._policy.delay(len(crashes))
                log.error("worker %s (pid %s) exited with code %s; restarting it in %.1f s", slot, proc.pid,
                          proc.exitcode, delay)
                self._due[slot] = now + delay
            for slot, due in list(self._due.items()):
                if now >= due:
                    del self._due[slot]
                    self.procs[slot] = self._spawn(slot)
                    self.restarts += 1
        return None

    def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker (each drains its in-flight requests); kill those still there after timeout_s."""
        for proc in self.procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join(5)


def start_worker(slot: str, bundle: str, overlay: dict[str, Any], source: str, addresses: BrokerAddresses,
                 control_key: bytes, verbose: bool = False, json_logs: bool = False) -> mp.process.BaseProcess:
    """A worker process; `control_key` reaches it through the spawn pipe, never its command line."""
    ctx = mp.get_context("spawn")  # never fork a process that holds ZeroMQ contexts and threads
    proc = ctx.Process(target=worker_main,
                       args=(slot, bundle, overlay, source, addresses, control_key, verbose, json_logs),
                       name=f"dualhrq-worker-{slot}")
    proc.start()
    return proc


def run_workers(bundle: str, overlay: dict[str, Any], source: str, serve: ServeConfig,
                verbose: bool = False, json_logs: bool = False) -> int:
    """The supervisor: broker + serve.workers workers, and with serve.metrics_port one HTTP endpoint for them
    all (dualhrq.runtime.workers_http); SIGTERM/SIGINT drain them all and exit 0."""
    addresses = BrokerAddresses.local(serve.bind)
    try:
        broker = Broker(addresses, serve.curve).start()
        try:
            return _supervise(broker, bundle, overlay, source, serve, verbose, json_logs)
        finally:
            broker.stop()  # answers whatever a worker left unanswered
    finally:
        shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)


def _supervise(broker: Broker, bundle: str, overlay: dict[str, Any], source: str, serve: ServeConfig,
               verbose: bool, json_logs: bool) -> int:
    """The workers (and their metrics endpoint) until SIGTERM/SIGINT, or until a slot crashes too often: the
    exit code."""
    ports = {f"w{i}": worker_port(serve.metrics_port, i) if serve.metrics_port else 0 for i in range(serve.workers)}
    stop_http = serve_http(serve.metrics_port, ports, lambda: broker.live) if serve.metrics_port else None

    def spawn(slot: str) -> mp.process.BaseProcess:
        own = {**overlay, "serve": {**(overlay.get("serve") or {}), "metrics_port": ports[slot]}}
        return start_worker(slot, bundle, own, source, broker.addresses, broker.control_key, verbose, json_logs)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        supervisor = Supervisor(list(ports), spawn, broker.lost)
        why = supervisor.watch(stop)
        if why:
            log.error("%s", why)
        supervisor.stop(serve.drain_timeout_s + 10)
    finally:
        if stop_http is not None:
            stop_http()
    return 1 if why else 0
