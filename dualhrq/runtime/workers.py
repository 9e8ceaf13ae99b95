"""Scale-out: N engine processes behind one broker (dualhrq.runtime.broker) on one client address.

Each worker is a full `Server` (its own engine, batcher, retriever, event loop) whose socket *connects* to the
broker's backend instead of binding (dualhrq.runtime.backend). A worker can run on another machine: `dualhrq
serve --connect tcp://broker:PORT` (and `dualhrq broker` runs a broker alone); the local ones are started and
restarted by dualhrq.runtime.supervisor.

Admin state (kill switch, patterns on/off, reload) must hold for every worker, but an admin request reaches
only one. So the worker that applies it relays it on a control bus (PUB/SUB through the broker, messages
sealed as dualhrq.runtime.backend describes), and every sibling applies it too; the broker keeps the last value
of each setting and hands it to every worker that joins, before that worker loads its bundle, so a restarted
worker does not forget the kill switch; a restarted broker, which starts from the defaults, is taught what the
workers that reconnect to it hold. CURVE, when configured, terminates at the broker's frontend: the
proxy does not carry the client key inward, so behind a broker admin commands authenticate by token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from dualhrq.errors import EXIT_ERROR, HRMError
from dualhrq.runtime.backend import (
    HANDOVER_TOPIC,
    RELAY_TOPIC,
    SWITCHES,
    AdminState,
    BackendKeys,
    BadControlMessage,
    BrokerAddresses,
    ControlSeal,
    Echo,
    Handover,
    Relayed,
)

log = logging.getLogger(__name__)

# A value taught to a broker that rejoined with its defaults is sent again until the broker passes it back:
# this worker's PUB may not be connected to it yet, and drops what it cannot deliver.
TEACH_TRIES, TEACH_WAIT_S = 5, 0.5
# A command of this worker's the broker has not passed back within this long is taken as lost (its reply said
# `relayed: false`): a hand-over of the broker's value of that setting is applied, not held back for its echo.
ECHO_LOST_S = 1.0


class ControlBus:
    """A worker's link to its siblings: take the admin state the broker holds when joining, relay the admin
    commands it applied, apply theirs. `key` seals and checks every message (the broker holds the same)."""

    def __init__(self, publish_to: str, subscribe_to: str, key: bytes) -> None:
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seal = ControlSeal(key, self.origin)
        self._ctx = zmq.asyncio.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 500)
        self._pub.connect(publish_to)
        self._subscribe_to = subscribe_to
        self._sub: zmq.asyncio.Socket | None = None
        self._latest_own: dict[str, int] = {}  # setting -> seq of the last command of this worker's that sets it
        # seq -> (done when the broker relayed it back, when it was published), while unechoed
        self._unechoed: dict[int, tuple[asyncio.Future[None], float]] = {}
        self._loads: set[asyncio.Task] = set()  # relayed reloads under way
        self._teaching: dict[str, asyncio.Task] = {}  # setting -> its value being taught to the broker

    def publish(self, cmd: str, bundle: str = "") -> asyncio.Future[None]:
        """Relay a command this worker applied. The future is done once the broker has passed it on (its echo
        came back): PUB drops what it cannot deliver, so only that echo says the siblings were sent it."""
        return self._publish(cmd, bundle, taught=False)

    def teach(self, cmd: str, bundle: str = "") -> None:
        """Relay the value this worker holds of `cmd`'s setting to a broker that holds its default (one that
        restarted), again until the broker passes it back or passes another's value of the setting: the
        broker refuses the later ones (`Relayed.taught`)."""
        setting = _setting(cmd)
        if (old := self._teaching.pop(setting, None)) is not None:
            old.cancel()
        task = self._teaching[setting] = asyncio.create_task(self._teach(cmd, bundle))
        task.add_done_callback(lambda t: self._teaching.pop(setting) if self._teaching.get(setting) is t else None)

    def _publish(self, cmd: str, bundle: str, taught: bool) -> asyncio.Future[None]:
        frames = self._seal.relay(cmd, bundle, taught)
        seq = self._seal.sealed
        self._latest_own[_setting(cmd)] = seq
        echoed = asyncio.get_running_loop().create_future()
        self._unechoed[seq] = echoed, time.monotonic()
        echoed.add_done_callback(lambda _: self._unechoed.pop(seq, None))
        self._pub.send_multipart(frames, zmq.NOBLOCK)
        return echoed

    async def join(self, timeout_s: float) -> AdminState | None:
        """Subscribe (the first time) and wait up to `timeout_s` for the state the broker hands over; None when
        none came. Relays that arrive before it are already part of it."""
        if self._sub is None:
            self._sub = self._subscribe()
        until = time.monotonic() + timeout_s
        while (left := until - time.monotonic()) > 0:
            if not await self._sub.poll(left * 1000):
                return None
            msg = self._read(await self._sub.recv_multipart())
            if isinstance(msg, Handover):
                return msg.state
        return None

    async def listen(self, apply: Callable[[str, str, Echo | None], Awaitable[Any]],
                     held: Callable[[], AdminState]) -> None:
        """Apply every relayed command, in the broker's order, until cancelled (after `join`: its socket holds
        what came since). A later hand-over comes from a broker this worker joined again, restarted or after a
        break: where it differs from what this worker holds (``held()``), the settings commanded through the
        broker since it started are applied, and this worker teaches it the others (`AdminState.differences`),
        so that a restarted broker and the workers that joined it since hold what the cluster held.

        This worker's own commands come back too, and are applied again (``apply(cmd, bundle, echo)``, with
        echo a check; None for a sibling's): two workers that took conflicting commands at once each applied its
        own first, and only the broker's order, which every worker sees, makes them agree, as the broker's
        hand-over does. An echo is applied only while ``echo()`` holds, i.e. no later command of this worker's
        set the same setting: re-applying it would undo that command (a kill switch switched off again, the
        previous bundle loaded over the new one) until the later echo arrived. `apply` asks at the moment it
        would act, which for a reload is once it holds the reload lock.

        A reload under way when the listener is cancelled runs to its end: cancelling it would abandon the
        host its thread is still loading, open. The server's drain waits for it and closes what it loaded."""
        assert self._sub is not None, "join the bus before listening"
        try:
            while True:
                msg = self._read(await self._sub.recv_multipart())
                if isinstance(msg, Handover):
                    await self._rejoined(msg.state, held(), apply)
                if not isinstance(msg, Relayed):
                    continue
                echo = None
                if msg.origin == self.origin:
                    if (unechoed := self._unechoed.get(msg.seq)) is not None and not unechoed[0].done():
                        unechoed[0].set_result(None)
                    echo = self._still_latest(msg.cmd, msg.seq)
                else:
                    if (teaching := self._teaching.pop(_setting(msg.cmd), None)) is not None:
                        teaching.cancel()  # the broker passed another's value of it: this one would be refused
                    if msg.taught and held().holds(msg.cmd, msg.bundle):
                        continue  # a sibling teaching what this worker holds: a reload would only reload
                await self._dispatch(apply, msg.cmd, msg.bundle, echo, f"worker {msg.origin}")
        finally:
            for task in list(self._teaching.values()):
                task.cancel()

    def close(self) -> None:
        for sock in (self._pub, self._sub):
            if sock is not None:
                sock.close()
        self._ctx.term()

    def _subscribe(self) -> zmq.asyncio.Socket:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        # Relays first: by the time the broker sees the hand-over topic (and answers it), this socket already
        # receives every relay, so none falls between the state and the relays after it.
        sub.setsockopt(zmq.SUBSCRIBE, RELAY_TOPIC)
        sub.setsockopt(zmq.SUBSCRIBE, HANDOVER_TOPIC + self.origin.encode())
        sub.connect(self._subscribe_to)
        return sub

    def _read(self, frames: list[bytes]) -> Relayed | Handover | None:
        """The message, or None (logged) for one that is forged, malformed, stale or replayed."""
        try:
            return self._seal.open(frames)
        except BadControlMessage as e:
            log.warning("control bus: message refused: %s", e)
            return None

    def _still_latest(self, cmd: str, seq: int) -> Echo:
        setting = _setting(cmd)
        return lambda: self._latest_own.get(setting) == seq

    async def _dispatch(self, apply: Callable[[str, str, Echo | None], Awaitable[Any]], cmd: str, bundle: str,
                        echo: Echo | None, source: str) -> None:
        if cmd == "reload":  # a load takes seconds: a kill switch relayed behind it must not wait for it
            task = asyncio.create_task(self._apply(apply, cmd, bundle, echo, source))  # (nor grow stale in the socket)
            self._loads.add(task)  # the loop holds tasks weakly
            task.add_done_callback(self._loads.discard)
        else:
            await self._apply(apply, cmd, bundle, echo, source)

    async def _rejoined(self, state: AdminState, held: AdminState,
                        apply: Callable[[str, str, Echo | None], Awaitable[Any]]) -> None:
        for cmd, bundle, taught in state.differences(held):
            if taught:
                log.warning("the broker holds the default of %s: this worker teaches it what it holds", cmd)
                self.teach(cmd, bundle)
            elif self._awaiting_echo(_setting(cmd)):
                continue  # a later command of this worker's on it is on its way through the broker
            else:
                log.warning("the broker passed on %s while this worker was away from it: applied now", cmd)
                await self._dispatch(apply, cmd, bundle, None, "the broker's hand-over")

    def _awaiting_echo(self, setting: str) -> bool:
        """Whether this worker's last command of `setting` is still on its way through the broker."""
        unechoed = self._unechoed.get(self._latest_own.get(setting, -1))
        return unechoed is not None and time.monotonic() - unechoed[1] < ECHO_LOST_S

    async def _teach(self, cmd: str, bundle: str) -> None:
        """Relay a taught value until the broker passes it back, or a later command of this worker's on that
        setting makes it stale; the broker refuses it (logged there) once the operator has set the setting."""
        for _ in range(TEACH_TRIES):
            echoed = self._publish(cmd, bundle, taught=True)
            seq = self._seal.sealed
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(echoed), TEACH_WAIT_S)
                    return
            finally:
                echoed.cancel()  # not waited for any more (done already, or cancelled): its entry goes
            if not self._still_latest(cmd, seq)():  # this worker took a command of it since
                return
        log.warning("%s taught to the broker did not come back after %d tries (is the broker reachable?)", cmd,
                    TEACH_TRIES)

    @staticmethod
    async def _apply(apply: Callable[[str, str, Echo | None], Awaitable[Any]], cmd: str, bundle: str,
                     echo: Echo | None, source: str) -> None:
        try:
            await apply(cmd, bundle, echo)
            if echo is None:
                log.info("applied %s relayed from %s", cmd, source)
        except Exception:  # noqa: BLE001 - one relay that fails (a bundle that does not load) must not end the listener
            log.exception("relayed admin command %r failed", cmd)


def _setting(cmd: str) -> str:
    """The admin setting a relayed command sets."""
    return SWITCHES[cmd][0] if cmd in SWITCHES else "bundle"


# ---------------------------------------------------------------- worker processes


def worker_main(slot: str, bundle: str, overlay: dict[str, Any], source: str, addresses: BrokerAddresses,
                control_key: bytes, verbose: bool = False, json_logs: bool = False) -> None:
    """One worker process: a Server connected to the broker's backend as `slot`, with the control bus."""
    from dualhrq.compliance.gate import ComplianceGate
    from dualhrq.runtime.host import load_host, serve_settings
    from dualhrq.runtime.logs import LineFormatter, use_json_logs
    from dualhrq.runtime.server import Server

    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter(f"%(asctime)s %(levelname)s worker-{slot}-{os.getpid()} %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    if json_logs:
        use_json_logs()
    cfg = serve_settings(bundle, overlay, source)
    # The clients' CURVE ends at the broker (Server drops it for a connected worker); the hop from the broker to
    # a worker is this machine's ipc, or CURVE under keys derived from the control key on tcp.
    bus = ControlBus(addresses.control_in, addresses.control_out, control_key)
    server = Server(cfg.serve, lambda path, hooks: load_host(path, overlay, hooks, source), bundle,
                    gate=ComplianceGate(cfg.compliance), connect=addresses.backend, control=bus, slot=slot,
                    backend_keys=BackendKeys.derive(control_key))
    try:
        code = asyncio.run(server.run())
    except HRMError as e:  # a setting that cannot work (e.g. its metrics port in use): said once, no traceback
        log.error("%s", e)
        code = EXIT_ERROR
    finally:
        bus.close()
    raise SystemExit(code)
