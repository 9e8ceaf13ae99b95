"""The hops between the broker and its workers (their addresses, the backend's frames, the control bus's sealed
messages), and a worker's end of the backend (`BrokerLink`).

A worker's DEALER connects to the broker's backend ROUTER. Frames on that hop:

    broker -> worker   [seq, *client envelope, body]   a request; seq is the broker's 8-byte tag for it
                       [b"", HEARTBEAT, live]          the broker is there, and `live` workers are serving
    worker -> broker   [seq, *client envelope, reply]  the answer (a Server echoes every frame but the body)
                       [b"", HEARTBEAT, slot]          registration and liveness in one message
                       [b"", LEAVING]                  draining: route nothing new here

A request's first frame is never empty (it is the broker's seq), so an empty first frame marks control. As
every heartbeat registers, a worker re-registers by itself after the broker restarts, and a broker that
restarted drops replies to seqs it never issued.

On tcp:// the hop is CURVE (`BackendKeys`, derived from the control key): only the broker's workers can connect,
so nobody else on the network takes a client's requests or answers them, and nobody on the path reads them.
An ipc:// backend (`serve --workers N` on one machine) lies in a private directory of the broker's.

Admin state travels beside it, on the control bus: PUB/SUB through the broker (dualhrq.runtime.workers has the
workers' end). Every message there is [topic, body, HMAC-SHA256 of both] under a key only the broker and its
workers hold (`ControlSeal`):

    worker -> broker -> every worker   RELAY_TOPIC             an admin command one worker applied (`Relayed`)
    broker -> one worker               HANDOVER_TOPIC + origin  the admin state, when that worker subscribes
                                                               (`Handover`): it holds it before it answers
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from dualhrq.errors import ConfigurationError
from dualhrq.runtime import protocol as p

log = logging.getLogger(__name__)


def bind(sock: zmq.Socket, address: str, setting: str) -> None:
    """``sock.bind(address)``; an address in use or malformed is a ConfigurationError naming ``setting``."""
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        raise ConfigurationError(f"{setting}: cannot listen on {address!r}: {e}") from None

HEARTBEAT = b"HB"
LEAVING = b"BYE"
HEARTBEAT_S = 0.5
# Silence after which the other side counts as gone: the broker then answers the worker's requests elsewhere,
# the worker reconnects. Several heartbeats long, so a worker busy in a long engine call is not declared dead.
TIMEOUT_S = 3.0


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


# ---------------------------------------------------------------- the control bus

RELAY_TOPIC = b"relay"
HANDOVER_TOPIC = b"state/"  # + the subscriber's origin: the one topic only that worker subscribes to
# A sealed message older than this (or this far in the future) is refused: a replay of an old relay to a worker
# that never saw it is stale by then. Machines on one network agree on the time far better than this.
MAX_AGE_S = 30.0
# Admin commands that set a switch: its field in AdminState, and the value the command gives it.
SWITCHES: dict[str, tuple[str, bool]] = {
    "kill_switch_on": ("kill_switch", True), "kill_switch_off": ("kill_switch", False),
    "enable_patterns": ("patterns_enabled", True), "disable_patterns": ("patterns_enabled", False),
}
RELAYED = (*SWITCHES, "reload")  # every admin command that changes state (all but `stats`)
# A worker's own relayed command come back from the broker: true while it is still the last command this worker
# took on that setting (when false, applying it again would undo the later one).
Echo = Callable[[], bool]


class AdminState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What every worker must hold whenever it joins: the last value of each admin setting."""

    kill_switch: bool = False
    patterns_enabled: bool = True
    bundle: str = ""  # the bundle the last reload named ("": the one each worker was started with)
    # Whether a command of each setting passed through this broker since it started: until one has, the
    # setting is the broker's default, not the operator's, and the workers that hold another teach it theirs
    # (a kill switch: also a worker whose compliance store holds it on).
    kill_switch_set: bool = False
    patterns_set: bool = False
    reloaded: bool = False  # a reload (one of the path held, too)

    def after(self, cmd: str, bundle: str = "") -> AdminState:
        """This state once `cmd` (a relayed admin command) is applied."""
        if cmd in SWITCHES:
            name, value = SWITCHES[cmd]
            return msgspec.structs.replace(self, **{name: value, _SET[name]: True})
        if cmd == "reload":  # an empty bundle reloads the path already held
            return msgspec.structs.replace(self, bundle=bundle or self.bundle, reloaded=True)
        return self

    def holds(self, cmd: str, bundle: str = "") -> bool:
        """Whether this state has what `cmd` sets already (a reload: of this bundle)."""
        if cmd in SWITCHES:
            name, value = SWITCHES[cmd]
            return getattr(self, name) == value
        return cmd == "reload" and bundle in ("", self.bundle)

    def set_since_start(self, cmd: str) -> bool:
        """Whether a command of `cmd`'s setting passed through the broker since it started."""
        return getattr(self, _SET[SWITCHES[cmd][0]] if cmd in SWITCHES else "reloaded")

    def differences(self, held: AdminState) -> list[tuple[str, str, bool]]:
        """What a worker holding `held` does with this hand-over of a broker it joined again (restarted, or
        the same one after a break in which relays may have been lost): (cmd, bundle, taught) for each setting
        where they differ. A setting set through the broker since it started is the latest: the worker applies
        it (taught False). One not set since is the broker's default: the worker relays what it holds, to be
        taught to the broker and to the workers that joined it since (taught True); the first value taught
        counts as a command of that setting, so the others' are refused. A missed reload of the same path (a
        bundle replaced in place) does not show."""
        out = []
        if held.kill_switch != self.kill_switch:
            on = self.kill_switch if self.kill_switch_set else held.kill_switch
            out.append(("kill_switch_on" if on else "kill_switch_off", "", not self.kill_switch_set))
        if held.patterns_enabled != self.patterns_enabled:
            enabled = self.patterns_enabled if self.patterns_set else held.patterns_enabled
            out.append(("enable_patterns" if enabled else "disable_patterns", "", not self.patterns_set))
        if self.reloaded and held.bundle != self.bundle:
            out.append(("reload", self.bundle, False))
        elif not self.reloaded and held.reloaded:
            out.append(("reload", held.bundle, True))
        return out


_SET = {"kill_switch": "kill_switch_set", "patterns_enabled": "patterns_set"}  # a switch -> its AdminState flag


class _Sealed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    origin: str  # the sender: one per process and bus
    seq: int  # increasing per sender: a message at or below the last one seen from it is a replay
    ts: float  # wall-clock send time (seconds since the epoch)


class Relayed(_Sealed, frozen=True, tag="relay"):
    cmd: str  # one of RELAYED
    bundle: str = ""
    # A worker's value taught to a broker that holds the setting's default (`AdminState.differences`): the
    # broker passes it on only while no command of that setting (a taught value included) has passed through
    # it since it started, so a teaching worker that joined late cannot undo the operator's command.
    taught: bool = False


class Handover(_Sealed, frozen=True, tag="state"):
    state: AdminState


class BadControlMessage(Exception):
    """A control-bus message refused: not sealed with this bus's key, malformed, stale or replayed."""


class ControlSeal:
    """Seals and opens control-bus messages. Whoever can reach a TCP control bus could otherwise switch the
    kill switch off or reload any path on every worker: only holders of `key` (the broker and its workers) can
    seal a message that `open` accepts."""

    _encoder = msgspec.msgpack.Encoder()
    _decoder = msgspec.msgpack.Decoder(Relayed | Handover)

    def __init__(self, key: bytes, origin: str) -> None:
        self.origin = origin
        self._key = key
        self.sealed = 0  # the seq of the last message sealed
        self._last: dict[str, int] = {}  # origin -> the highest seq opened from it

    def relay(self, cmd: str, bundle: str = "", taught: bool = False) -> list[bytes]:
        return self._frames(RELAY_TOPIC, Relayed(self.origin, self._next(), time.time(), cmd, bundle, taught))

    def handover(self, to: bytes, state: AdminState) -> list[bytes]:
        """`state` for the subscriber whose origin is `to` alone."""
        return self._frames(HANDOVER_TOPIC + to, Handover(self.origin, self._next(), time.time(), state))

    def _next(self) -> int:
        self.sealed += 1
        return self.sealed

    def open(self, frames: list[bytes]) -> Relayed | Handover:
        """The message `frames` carry; BadControlMessage saying why it is refused."""
        if len(frames) != 3:
            raise BadControlMessage(f"{len(frames)} frames, expected 3 (topic, body, signature)")
        topic, body, mac = frames
        if not hmac.compare_digest(mac, self._mac(topic, body)):
            raise BadControlMessage("bad signature: not sealed with this bus's control key")
        try:
            msg = self._decoder.decode(body)
        except p.UNDECODABLE as e:
            raise BadControlMessage(f"malformed body: {type(e).__name__}: {e}") from None
        if isinstance(msg, Relayed) and msg.cmd not in RELAYED:
            raise BadControlMessage(f"{msg.cmd!r} is not an admin command that changes state")
        age = time.time() - msg.ts
        if abs(age) > MAX_AGE_S:
            raise BadControlMessage(f"stale: sent {age:.0f} s ago by {msg.origin} (clocks {MAX_AGE_S:g} s apart?)")
        if msg.seq <= self._last.get(msg.origin, 0):
            raise BadControlMessage(f"replayed: seq {msg.seq} of {msg.origin} was already seen")
        self._last[msg.origin] = msg.seq
        return msg

    def _frames(self, topic: bytes, msg: _Sealed) -> list[bytes]:
        body = self._encoder.encode(msg)
        return [topic, body, self._mac(topic, body)]

    def _mac(self, topic: bytes, body: bytes) -> bytes:
        # The topic is signed too: a relay cannot be re-addressed as a hand-over, nor one worker's hand-over
        # as another's.
        return hmac.new(self._key, len(topic).to_bytes(8, "big") + topic + body, hashlib.sha256).digest()


# ---------------------------------------------------------------- the backend's keys


@dataclass(frozen=True)
class BackendKeys:
    """CURVE key pairs for a tcp:// backend, the broker's and the workers', each derived from the control key
    (HMAC-SHA256 of a label as the secret): whoever holds the key can be a worker, nobody else can."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    worker_public: bytes
    worker_secret: bytes = field(repr=False)

    @classmethod
    def derive(cls, control_key: bytes) -> BackendKeys:
        def pair(label: bytes) -> tuple[bytes, bytes]:
            secret = z85.encode(hmac.new(control_key, label, hashlib.sha256).digest())
            return zmq.curve_public(secret), secret

        return cls(*pair(b"dualhrq backend: broker"), *pair(b"dualhrq backend: worker"))

    def serve(self, context: zmq.Context, sock: zmq.Socket) -> ThreadAuthenticator:
        """Before bind: `sock` a CURVE server that admits the workers' key alone. `context` must be the
        socket's own, with no other authenticator (one per context); the returned one is stopped by the
        caller."""
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve_callback("*", _OneKey(self.worker_public))
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = self.server_secret, self.server_public, True
        return auth

    def connect(self, sock: zmq.Socket) -> None:
        """Before connect: `sock` a worker's CURVE client."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey, sock.curve_secretkey = self.worker_public, self.worker_secret


@dataclass(frozen=True)
class _OneKey:
    """A ZAP credentials provider that admits one public key (z85)."""

    public: bytes

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.public)


def secured(address: str) -> bool:
    """Whether the backend at `address` needs CURVE: tcp:// does, a private ipc:// directory does not."""
    return address.startswith("tcp://")


# ---------------------------------------------------------------- a worker's registration


class BrokerLink:
    """A worker's registration with the broker: heartbeats, reconnects after TIMEOUT_S of silence, and the
    number of live workers the broker last announced (what `pong.workers` reports)."""

    def __init__(self, address: str, slot: str, keys: BackendKeys | None = None, heartbeat_s: float = HEARTBEAT_S,
                 timeout_s: float = TIMEOUT_S):
        if secured(address) and keys is None:
            raise ConfigurationError(f"--connect: {address} is a tcp:// backend, which takes only workers holding "
                                     "the control key; none was given")
        self.address, self.slot, self._keys = address, slot, keys
        self.workers = 1  # this one, until the broker says more
        self._heartbeat_s, self._timeout_s = heartbeat_s, timeout_s
        self._sock: zmq.Socket | None = None
        self._after_io: Callable[[], object] = lambda: None
        self._heard = time.monotonic()

    def attach(self, sock: zmq.Socket, after_io: Callable[[], object] = lambda: None) -> None:
        """Connect the worker's DEALER and register at once. ``after_io`` runs after every operation here on the
        socket: one can take the edge of its descriptor for a request that arrived meanwhile, and the server
        must look again."""
        if self._keys is not None and secured(self.address):
            self._keys.connect(sock)
        sock.connect(self.address)
        self._sock, self._after_io = sock, after_io
        self._heard = time.monotonic()
        self._send(HEARTBEAT, self.slot.encode())

    def control(self, frames: list[bytes]) -> bool:
        """Note that the broker was heard; True when `frames` were its control message, consumed here."""
        self._heard = time.monotonic()
        if frames[0]:
            return False
        if len(frames) > 2 and frames[1] == HEARTBEAT:
            self.workers = int(frames[2])
        return True

    async def run(self) -> None:
        """Beat until cancelled; after TIMEOUT_S without a word from the broker, reconnect (a broker that
        restarted, or a connection that died without a reset, is found again)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            assert self._sock is not None
            if time.monotonic() - self._heard > self._timeout_s:
                log.warning("no word from the broker at %s for %.1f s; reconnecting", self.address,
                            time.monotonic() - self._heard)
                try:
                    self._sock.disconnect(self.address)
                except zmq.ZMQError:
                    pass  # the old connection is already gone
                self._sock.connect(self.address)
                self._heard = time.monotonic()
                self._after_io()
            self._send(HEARTBEAT, self.slot.encode())

    def leave(self) -> None:
        """Tell the broker to send nothing new (the worker is draining)."""
        self._send(LEAVING)

    def _send(self, *control: bytes) -> None:
        if self._sock is not None:
            try:
                self._sock.send_multipart([b"", *control], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a control frame that could not leave is simply sent again next beat
            self._after_io()
