"""Scale-out: N engine processes behind one broker (dualhrq.runtime.broker) on one client address.

Each worker is a full `Server` (its own engine, batcher, retriever, event loop) whose socket *connects* to the
broker's backend instead of binding (dualhrq.runtime.backend). A worker can run on another machine: `dualhrq
serve --connect tcp://broker:PORT` (and `dualhrq broker` runs a broker alone); the local ones are started and
restarted by dualhrq.runtime.supervisor.

Admin state (kill switch, patterns on/off, reload) must hold for every worker, but an admin request reaches
only one. So the worker that applies it relays it on a control bus (PUB/SUB through an XSUB/XPUB proxy in the
broker), and every sibling applies it too. CURVE, when configured, terminates at the broker's frontend: the
proxy does not carry the client key inward, so behind a broker admin commands authenticate by token.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from dualhrq.errors import ConfigurationError

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


def worker_main(slot: str, bundle: str, overlay: dict[str, Any], source: str, addresses: BrokerAddresses,
                verbose: bool = False, json_logs: bool = False) -> None:
    """One worker process: a Server connected to the broker's backend as `slot`, with the control bus."""
    from dualhrq.compliance.gate import ComplianceGate
    from dualhrq.runtime.host import load_host, serve_settings
    from dualhrq.runtime.logs import use_json_logs
    from dualhrq.runtime.server import Server

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{slot}-{os.getpid()} %(name)s: %(message)s")
    if json_logs:
        use_json_logs()
    cfg = serve_settings(bundle, overlay, source)
    # CURVE ends at the broker (Server drops it for a connected worker); the hop from the broker to a worker is
    # this machine's ipc (or the operator's private network for remote workers).
    bus = ControlBus(addresses.control_in, addresses.control_out)
    server = Server(cfg.serve, lambda path, hooks: load_host(path, overlay, hooks, source), bundle,
                    gate=ComplianceGate(cfg.compliance), connect=addresses.backend, control=bus, slot=slot)
    try:
        code = asyncio.run(server.run())
    finally:
        bus.close()
    raise SystemExit(code)
