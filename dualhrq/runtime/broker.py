"""The broker: clients' ROUTER in front, workers' ROUTER behind, and one loop between them.

    clients --(REQ/DEALER)--> ROUTER [serve.bind] == broker loop == ROUTER [backend] <--DEALER-- worker 1..N

Workers register by heartbeat (dualhrq.runtime.backend). The loop routes each request by its instrument:
rendezvous hashing over the live workers' slot names, so every request of an instrument goes to one worker
and, when a worker goes, only its instruments move. An instrument with requests in flight stays with the
worker holding them (a worker that joins takes its instruments over between requests, never beside one).
Requests without an instrument (ping, admin) go round the live workers in turn.

A stream (`append` session) lives in the worker that opened it. The loop remembers which worker took each
session's last request: an `append` that would reach another one (its instrument moved since: a worker left, or
came back and took its instruments back) is answered `resync_required` here, since the worker it reaches may
hold an older window of the same session, from before the instrument last moved away from it.

The loop tags every request it forwards with a sequence number and keeps it until the reply comes back. A
worker that goes (its process exited, as the supervisor reports, or it fell silent for TIMEOUT_S) leaves its
requests behind: each is sent to the instrument's new owner when it carries no `market` section (it never
reached the compliance gate, so answering it twice changes nothing), otherwise answered `internal` saying the
worker was lost. Either way it gets exactly one reply, and a late answer to a retired tag is dropped.

Admin state travels on a separate control bus (XSUB in, XPUB out, `ControlBus` in the workers). Its thread passes
each sealed relay on and keeps the last value of every setting (`AdminState`), which it hands to each worker
that joins (subscribes): a worker restarted after the kill switch went on holds it before its first reply.
CURVE, when configured, terminates at the frontend: behind a broker admin commands authenticate by token.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq
from zmq.auth.thread import ThreadAuthenticator

from dualhrq.config import CurveConfig
from dualhrq.errors import ConfigurationError
from dualhrq.runtime import protocol as p
from dualhrq.runtime.backend import (
    HANDOVER_TOPIC,
    HEARTBEAT,
    HEARTBEAT_S,
    LEAVING,
    TIMEOUT_S,
    AdminState,
    BackendKeys,
    BadControlMessage,
    BrokerAddresses,
    ControlSeal,
    Relayed,
    bind,
    secured,
)
from dualhrq.runtime.heap import freeze_heap
from dualhrq.runtime.security import CurveServer

log = logging.getLogger(__name__)

_STOP, _LOST = b"stop", b"lost"


class _Head(msgspec.Struct):
    """Just enough of a request to route it: every other field (the bars) is skipped, not built."""

    id: Any = None
    type: Any = None
    instrument: Any = None
    session: Any = None
    market: Any = None


_head_decoder = msgspec.msgpack.Decoder(_Head)
# Sessions whose worker the loop remembers; the least recently used is forgotten first, and its next `append`
# resyncs (as after a broker restart: the loop knows no session then).
MAX_SESSIONS = 100_000


def _head(body: bytes) -> _Head:
    try:
        return _head_decoder.decode(body)
    except p.UNDECODABLE:
        return _Head()  # not a request map: any worker answers it with the protocol's error


def _score(slot: bytes, instrument: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(slot + b"\0" + instrument, digest_size=8).digest(), "big")


@dataclass
class _Worker:
    wid: bytes  # its routing id on the backend (one per connection)
    slot: bytes  # its name for hashing: a replacement inherits its predecessor's instruments
    seen: float
    pending: set[bytes] = field(default_factory=set)
    leaving: bool = False


@dataclass
class _Pending:
    worker: _Worker
    envelope: list[bytes]
    body: bytes
    head: _Head
    instrument: bytes | None


class Broker:
    """The routing loop and the control bus, each on its own thread. `live` is read from any thread.

    `control_key` seals the control bus: its workers must be given the same (a fresh random one by default,
    which the supervisor hands to the workers it starts)."""

    def __init__(self, addresses: BrokerAddresses, curve: CurveConfig = CurveConfig(),
                 timeout_s: float = TIMEOUT_S, control_key: bytes | None = None) -> None:
        self.addresses = addresses
        self.live = 0  # workers registered and not draining
        self.control_key = control_key or secrets.token_bytes(32)
        self._seal = ControlSeal(self.control_key, f"broker-{uuid.uuid4().hex[:8]}")
        self._state = AdminState()  # the control thread's alone
        self._timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._curve = CurveServer(curve)
        self._back_ctx: zmq.Context | None = None  # a tcp:// backend's, with its authenticator
        self._back_auth: ThreadAuthenticator | None = None
        self._threads: list[threading.Thread] = []
        self._commands = f"inproc://broker-commands-{uuid.uuid4().hex}"
        self._steer = f"inproc://broker-steer-{uuid.uuid4().hex}"
        self._workers: dict[bytes, _Worker] = {}
        self._routable: list[_Worker] = []
        self._pending: dict[bytes, _Pending] = {}
        self._busy: dict[bytes, list] = {}  # instrument -> [worker holding its requests, how many]
        self._sessions: OrderedDict[str, bytes] = OrderedDict()  # session -> wid of the worker of its last request
        self._seq = itertools.count(random.getrandbits(62))  # a restarted broker never reuses a live tag
        self._turn = 0

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Broker:
        """Bind every socket (ConfigurationError naming the address that cannot be bound) and start the threads."""
        a = self.addresses
        sockets: list[zmq.Socket] = []
        try:
            front = self._socket(sockets, zmq.ROUTER, a.frontend, "serve.bind (--bind)", linger=1000, curve=True)
            back = self._socket(sockets, zmq.ROUTER, a.backend, "--backend", linger=0, backend=True)
            back.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a request the worker cannot take must fail loudly
            xsub = self._socket(sockets, zmq.XSUB, a.control_in, "--backend (its port + 1: the control bus)")
            xpub = self._socket(sockets, zmq.XPUB, a.control_out, "--backend (its port + 2: the control bus)")
        except ConfigurationError:  # nothing is left running: the caller only reports the error
            for s in sockets:
                s.close(linger=0)
            self._curve.stop()
            self._end_backend()
            self._ctx.term()
            raise
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription comes up, a re-subscription too
        commands = self._ctx.socket(zmq.PULL)
        commands.bind(self._commands)
        steer = self._ctx.socket(zmq.PAIR)
        steer.bind(self._steer)
        self._threads = [threading.Thread(target=self._run, args=(front, back, commands), name="broker-requests",
                                          daemon=True),
                         threading.Thread(target=self._control, args=(xsub, xpub, steer), name="broker-control",
                                          daemon=True)]
        freeze_heap(collect=True)  # before the first request: its imports would be a full collection's pause
        for t in self._threads:
            t.start()
        log.info("broker: clients on %s, workers on %s", a.frontend, a.backend)
        return self

    def lost(self, slot: str) -> None:
        """The worker of `slot` is gone (its process exited): answer what it held now. Thread-safe."""
        self._command(_LOST, slot.encode())

    def stop(self) -> None:
        """Answer whatever is still pending (`internal`, shutting down) and close everything."""
        self._command(_STOP)
        s = self._ctx.socket(zmq.PAIR)
        s.connect(self._steer)
        s.send(b"TERMINATE")
        s.close(linger=100)
        for t in self._threads:
            t.join(5)
        self._curve.stop()
        self._end_backend()
        self._ctx.term()

    def _end_backend(self) -> None:
        if self._back_auth is not None:
            self._back_auth.stop()
        if self._back_ctx is not None:
            self._back_ctx.term()

    def _socket(self, opened: list[zmq.Socket], kind: int, address: str, setting: str, *, linger: int = -1,
                curve: bool = False, backend: bool = False) -> zmq.Socket:
        """A socket of `kind` bound to `address` (added to `opened`); a bind that fails names `setting`.
        `curve`: the clients' CURVE (serve.curve); `backend`: the workers' (BackendKeys) on a tcp:// address."""
        if backend and secured(address):  # its own context: one authenticator per context, the clients' is apart
            self._back_ctx = zmq.Context()
            sock = self._back_ctx.socket(kind)
            opened.append(sock)
            try:
                self._back_auth = BackendKeys.derive(self.control_key).serve(self._back_ctx, sock)
            except (zmq.ZMQError, RuntimeError) as e:
                raise ConfigurationError(f"{setting}: cannot secure {address!r} with CURVE: {e}") from None
        else:
            sock = self._ctx.socket(kind)
            opened.append(sock)
        if linger >= 0:
            sock.setsockopt(zmq.LINGER, linger)
        if curve:
            self._curve.secure(self._ctx, sock)
        bind(sock, address, setting)
        return sock

    def _command(self, *frames: bytes) -> None:
        s = self._ctx.socket(zmq.PUSH)
        s.connect(self._commands)
        s.send_multipart(list(frames))
        s.close(linger=1000)

    # ------------------------------------------------------------ the control bus

    def _control(self, xsub: zmq.Socket, xpub: zmq.Socket, steer: zmq.Socket) -> None:
        """Pass relays from XSUB to XPUB and answer each hand-over subscription on XPUB, until steered to stop."""
        xsub.send(b"\x01")  # subscribe to everything every worker publishes
        poller = zmq.Poller()
        for s in (xsub, xpub, steer):
            poller.register(s, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll())
                if steer in events:
                    return
                if xsub in events:
                    self._drain(xsub, lambda frames: self._relay(frames, xpub))
                if xpub in events:
                    self._drain(xpub, lambda frames: self._subscribed(frames[0], xpub))
        finally:
            for s in (xsub, xpub, steer):
                s.close(linger=0)

    def _relay(self, frames: list[bytes], xpub: zmq.Socket) -> None:
        """A worker's relayed command: checked, folded into the state, passed on to every worker."""
        try:
            msg = self._seal.open(frames)
        except BadControlMessage as e:
            log.warning("broker: control message refused: %s", e)
            return
        if not isinstance(msg, Relayed):
            log.warning("broker: control message refused: a hand-over from %s (only the broker sends those)",
                        msg.origin)
            return
        if msg.taught and self._state.set_since_start(msg.cmd):
            log.info("broker: %s taught by %s not passed on: a command of that setting came since", msg.cmd,
                     msg.origin)
            return
        self._state = self._state.after(msg.cmd, msg.bundle)
        xpub.send_multipart(frames)

    def _subscribed(self, subscription: bytes, xpub: zmq.Socket) -> None:
        """A worker joining subscribes to its own hand-over topic: the state goes to it alone, on that topic."""
        topic = subscription[1:]
        if subscription[:1] == b"\x01" and topic.startswith(HANDOVER_TOPIC):
            xpub.send_multipart(self._seal.handover(topic[len(HANDOVER_TOPIC):], self._state))

    # ------------------------------------------------------------ the loop

    def _run(self, front: zmq.Socket, back: zmq.Socket, commands: zmq.Socket) -> None:
        self._front, self._back = front, back
        poller = zmq.Poller()
        poller.register(back, zmq.POLLIN)
        poller.register(commands, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while True:
                # Clients' requests wait in the frontend while no worker is there to take them.
                poller.register(front, zmq.POLLIN if self._routable else 0)
                events = dict(poller.poll(max(0.0, next_beat - time.monotonic()) * 1000))
                if back in events:
                    self._drain(back, self._from_worker)
                if front in events:
                    self._drain(front, self._from_client)
                if commands in events:
                    cmd, *args = commands.recv_multipart()
                    if cmd == _STOP:
                        break
                    for w in [w for w in self._workers.values() if w.slot == args[0]]:
                        self._lose(w, "its process exited")
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + HEARTBEAT_S
            for seq in list(self._pending):
                pending = self._finish(seq)
                self._reply(pending.envelope, pending.head, "internal", "server shutting down")
        finally:
            for s in (front, back, commands):
                s.close()

    @staticmethod
    def _drain(sock: zmq.Socket, handle: Callable[[list[bytes]], None]) -> None:
        for _ in range(1000):  # take what has arrived, then look at the other sockets again
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                handle(frames)
            except Exception:  # noqa: BLE001 - one malformed message must not stop the loop every request crosses
                log.exception("broker: message of %d frames not handled", len(frames))

    def _from_client(self, frames: list[bytes]) -> None:
        head = _head(frames[-1])
        instrument = head.instrument.encode() if isinstance(head.instrument, str) else None
        self._dispatch(frames[:-1], frames[-1], head, instrument)

    def _from_worker(self, frames: list[bytes]) -> None:
        wid = frames[0]
        worker = self._workers.get(wid)
        if worker is not None:
            worker.seen = time.monotonic()
        if frames[1]:  # a reply
            if frames[1] in self._pending:
                pending = self._finish(frames[1])
                self._front.send_multipart([*pending.envelope, frames[-1]])
            return  # else: the answer to a request already answered as lost, or issued by a broker before us
        control = frames[2:]
        if control == [LEAVING] and worker is not None:
            worker.leaving = True
            self._membership()
        elif len(control) == 2 and control[0] == HEARTBEAT and worker is None:
            self._register(wid, control[1])

    # ------------------------------------------------------------ workers

    def _register(self, wid: bytes, slot: bytes) -> None:
        # A slot has one holder: a new registration for it means the old holder is gone (restarted, reconnected).
        for old in [w for w in self._workers.values() if w.slot == slot]:
            self._lose(old, "its slot re-registered")
        self._workers[wid] = _Worker(wid, slot, time.monotonic())
        log.info("worker %s registered", slot.decode(errors="replace"))
        self._membership()

    def _lose(self, worker: _Worker, why: str) -> None:
        if self._workers.pop(worker.wid, None) is None:
            return
        log.warning("worker %s lost (%s); %d requests in flight on it", worker.slot.decode(errors="replace"), why,
                    len(worker.pending))
        self._membership()
        for seq in list(worker.pending):
            pending = self._finish(seq)
            if pending.head.market is None:  # never reached the compliance gate: safe to answer elsewhere
                self._dispatch(pending.envelope, pending.body, pending.head, pending.instrument)
            else:
                self._reply(pending.envelope, pending.head, "internal", "the worker holding this request was lost before "
                            "it answered; it may have changed compliance state, so it was not re-sent")

    def _membership(self) -> None:
        self._routable = [w for w in self._workers.values() if not w.leaving]
        self.live = len(self._routable)
        self._beat(expire=False)

    def _beat(self, expire: bool = True) -> None:
        """Heartbeat every worker with the live count; those silent for too long are lost."""
        now = time.monotonic()
        for w in list(self._workers.values()):
            if expire and now - w.seen > self._timeout_s:
                self._lose(w, f"silent for {now - w.seen:.1f} s")
        for w in list(self._workers.values()):
            try:
                self._back.send_multipart([w.wid, b"", HEARTBEAT, str(self.live).encode()], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # unreachable or full: its silence, or its next reply, will tell

    # ------------------------------------------------------------ requests

    def _route(self, instrument: bytes | None) -> _Worker | None:
        if not self._routable:
            return None
        if instrument is None:
            self._turn += 1
            return self._routable[self._turn % len(self._routable)]
        busy = self._busy.get(instrument)
        if busy is not None and not busy[0].leaving and busy[0].wid in self._workers:
            return busy[0]
        return max(self._routable, key=lambda w: _score(w.slot, instrument))

    def _dispatch(self, envelope: list[bytes], body: bytes, head: _Head, instrument: bytes | None) -> None:
        while (worker := self._route(instrument)) is not None:
            if not self._follows_stream(head, worker):
                self._reply(envelope, head, "resync_required", f"session {head.session!r}: its previous request "
                            "went to another worker (a worker left or joined since): send the whole window as a "
                            "signal with the session", "session")
                return
            seq = next(self._seq).to_bytes(8, "big")
            try:
                self._back.send_multipart([worker.wid, seq, *envelope, body], zmq.NOBLOCK)
            except zmq.Again:
                self._reply(envelope, head, "overloaded", "the worker's queue is full")
                return
            except zmq.ZMQError:  # not connected any more (ROUTER_MANDATORY): nothing was sent, try another
                self._lose(worker, "unreachable")
                continue
            self._pending[seq] = _Pending(worker, envelope, body, head, instrument)
            worker.pending.add(seq)
            if instrument is not None:
                busy = self._busy.get(instrument)
                if busy is not None and busy[0] is worker:
                    busy[1] += 1
                else:  # a new owner (the old one left): the old one's requests no longer count here
                    self._busy[instrument] = [worker, 1]
            return
        self._reply(envelope, head, "internal", "no worker is alive to answer")

    def _follows_stream(self, head: _Head, worker: _Worker) -> bool:
        """Whether a request may go to `worker` as far as its session goes (noting where a stream's request
        goes): a signal naming a session (re)opens its stream there; an append must reach that same worker."""
        session = head.session
        if not (isinstance(session, str) and 1 <= len(session) <= 64) or head.type not in ("signal", "append"):
            return True  # no session, or one the worker refuses (the protocol's 1 to 64 characters)
        if head.type == "append" and self._sessions.get(session) != worker.wid:
            return False
        self._sessions[session] = worker.wid
        self._sessions.move_to_end(session)
        if len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return True

    def _finish(self, seq: bytes) -> _Pending:
        pending = self._pending.pop(seq)
        pending.worker.pending.discard(seq)
        busy = self._busy.get(pending.instrument) if pending.instrument is not None else None
        if busy is not None and busy[0] is pending.worker:
            busy[1] -= 1
            if busy[1] == 0:
                del self._busy[pending.instrument]
        return pending

    def _reply(self, envelope: list[bytes], head: _Head, code: p.ErrorCode, message: str,
               field: str | None = None) -> None:
        rid = head.id if isinstance(head.id, str) and 1 <= len(head.id) <= 64 else None
        self._front.send_multipart([*envelope, p.encode(p.ErrorReply(id=rid, code=code, message=message,
                                                                     field=field))])
