"""Scale-out: N engine processes behind ZeroMQ's own ROUTER/DEALER proxy on one client address.

    clients --(REQ/DEALER)--> ROUTER [serve.bind]  ==zmq.proxy==  DEALER [backend] <--connect-- worker 1..N

Each worker is a full `Server` (its own engine, batcher, retriever, event loop) whose ROUTER *connects* to
the broker's backend instead of binding; the proxy keeps every envelope frame, so replies find their way back.
A worker can run on another machine: `dualhrq serve --connect tcp://broker:PORT` (and `dualhrq broker` runs a
broker alone). The DEALER hands requests round-robin to the workers that are connected: a dead worker's pipe
goes away with its connection, so the others keep serving, and the requests it held are simply never answered
(the client's timeout and retry cover them).

Admin state (kill switch, patterns on/off, reload) must hold for every worker, but an admin request reaches
only one. So the worker that applies it relays it on a control bus (PUB/SUB through an XSUB/XPUB proxy in the
broker), and every sibling applies it too. CURVE, when configured, terminates at the broker's frontend: the
proxy does not carry the client key inward, so behind a broker admin commands authenticate by token.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from dualhrq.config import CurveConfig, ServeConfig
from dualhrq.errors import ConfigurationError
from dualhrq.runtime.security import CurveServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerAddresses:
    frontend: str  # where clients connect (serve.bind)
    backend: str  # where workers connect
    control_in: str  # workers publish relayed admin commands here (XSUB)
    control_out: str  # and subscribe to them here (XPUB)

    @classmethod
    def remote(cls, backend: str, frontend: str = "") -> BrokerAddresses:
        """A broker on the network: backend tcp://HOST:PORT, its control bus on PORT+1 and PORT+2."""
        host, _, port = backend.rpartition(":")
        if not backend.startswith("tcp://") or not port.isdigit():
            raise ConfigurationError(f"--connect/--backend: expected tcp://HOST:PORT, got {backend!r}")
        return cls(frontend, backend, f"{host}:{int(port) + 1}", f"{host}:{int(port) + 2}")

    @classmethod
    def local(cls, frontend: str) -> BrokerAddresses:
        """Backend and control bus on ipc:// endpoints in a fresh private directory."""
        d = Path(tempfile.mkdtemp(prefix="dualhrq-broker-"))
        return cls(frontend, f"ipc://{d}/backend", f"ipc://{d}/control-in", f"ipc://{d}/control-out")


class Broker:
    """The ROUTER/DEALER proxy and the control-bus XSUB/XPUB proxy, each on its own thread."""

    def __init__(self, addresses: BrokerAddresses, curve: CurveConfig = CurveConfig()) -> None:
        self.addresses = addresses
        self._ctx = zmq.Context()
        self._curve = CurveServer(curve)
        self._threads: list[threading.Thread] = []
        self._controls: list[str] = []

    def start(self) -> Broker:
        a = self.addresses
        front = self._ctx.socket(zmq.ROUTER)
        self._curve.secure(self._ctx, front)
        front.bind(a.frontend)
        back = self._ctx.socket(zmq.DEALER)
        back.bind(a.backend)
        xsub = self._ctx.socket(zmq.XSUB)
        xsub.bind(a.control_in)
        xpub = self._ctx.socket(zmq.XPUB)
        xpub.bind(a.control_out)
        for name, pair in (("requests", (front, back)), ("control", (xsub, xpub))):
            steer = f"inproc://steer-{name}-{uuid.uuid4().hex}"
            control = self._ctx.socket(zmq.PAIR)
            control.bind(steer)
            thread = threading.Thread(target=self._proxy, args=(*pair, control), name=f"broker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
            self._controls.append(steer)
        log.info("broker: clients on %s, workers on %s", a.frontend, a.backend)
        return self

    @staticmethod
    def _proxy(a: zmq.Socket, b: zmq.Socket, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(a, b, None, control)
        except zmq.ContextTerminated:
            pass
        finally:
            for s in (a, b, control):
                s.close(linger=0)

    def stop(self) -> None:
        for steer in self._controls:
            s = self._ctx.socket(zmq.PAIR)
            s.connect(steer)
            s.send(b"TERMINATE")
            s.close(linger=100)
        for t in self._threads:
            t.join(5)
        self._curve.stop()
        self._ctx.term()


class ControlBus:
    """A worker's link to its siblings: relay the admin commands it applied, apply theirs."""

    _encoder = msgspec.msgpack.Encoder()

    def __init__(self, publish_to: str, subscribe_to: str) -> None:
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 500)
        self._pub.connect(publish_to)
        self._subscribe_to = subscribe_to

    def publish(self, cmd: str, bundle: str = "") -> None:
        self._pub.send(self._encoder.encode({"origin": self.origin, "cmd": cmd, "bundle": bundle}), zmq.NOBLOCK)

    async def listen(self, apply: Callable[[str, str], Awaitable[Any]]) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._subscribe_to)
        try:
            while True:
                msg = msgspec.msgpack.decode(await sub.recv())
                if msg.get("origin") == self.origin:
                    continue
                try:
                    await apply(msg["cmd"], msg.get("bundle", ""))
                    log.info("applied %s relayed from worker %s", msg["cmd"], msg["origin"])
                except Exception:  # noqa: BLE001 - one bad relay must not end the listener
                    log.exception("relayed admin command %r failed", msg.get("cmd"))
        finally:
            sub.close()

    def close(self) -> None:
        self._pub.close()
        self._ctx.term()


# ---------------------------------------------------------------- worker processes


def worker_main(bundle: str, overlay: dict[str, Any], source: str, addresses: BrokerAddresses,
                verbose: bool = False, json_logs: bool = False) -> None:
    """One worker process: a Server connected to the broker's backend, with the control bus."""
    from dualhrq.compliance.gate import ComplianceGate
    from dualhrq.runtime.host import load_host, serve_settings
    from dualhrq.runtime.logs import use_json_logs
    from dualhrq.runtime.server import Server

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: %(message)s")
    if json_logs:
        use_json_logs()
    cfg = serve_settings(bundle, overlay, source)
    # CURVE ends at the broker (Server drops it for a connected worker); the hop from the broker to a worker is
    # this machine's ipc (or the operator's private network for remote workers).
    serve = msgspec.structs.replace(cfg.serve, metrics_port=0)
    bus = ControlBus(addresses.control_in, addresses.control_out)
    server = Server(serve, lambda path, hooks: load_host(path, overlay, hooks, source), bundle,
                    gate=ComplianceGate(cfg.compliance), connect=addresses.backend, control=bus)
    try:
        code = asyncio.run(server.run())
    finally:
        bus.close()
    raise SystemExit(code)


def start_workers(n: int, bundle: str, overlay: dict[str, Any], source: str, addresses: BrokerAddresses,
                  verbose: bool = False, json_logs: bool = False) -> list[mp.Process]:
    ctx = mp.get_context("spawn")  # never fork a process that holds ZeroMQ contexts and threads
    procs = [ctx.Process(target=worker_main, args=(bundle, overlay, source, addresses, verbose, json_logs),
                         name=f"dualhrq-worker-{i}") for i in range(n)]
    for proc in procs:
        proc.start()
    return procs


def run_workers(bundle: str, overlay: dict[str, Any], source: str, serve: ServeConfig,
                verbose: bool = False, json_logs: bool = False) -> int:
    """The `serve --workers N` supervisor: broker + serve.workers workers; SIGTERM/SIGINT drain them all, exit 0."""
    addresses = BrokerAddresses.local(serve.bind)
    broker = Broker(addresses, serve.curve).start()
    procs = start_workers(serve.workers, bundle, overlay, source, addresses, verbose, json_logs)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        dead = [p for p in procs if not p.is_alive()]
        if len(dead) == len(procs):
            log.error("every worker has exited; stopping")
            break
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)  # each drains its in-flight requests
    deadline = time.monotonic() + serve.drain_timeout_s + 10
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            log.error("worker %d did not stop in time; killing it", proc.pid)
            proc.kill()
    broker.stop()
    shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)
    return 0 if stop.is_set() else 1
