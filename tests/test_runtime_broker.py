"""The broker against scripted workers: instrument affinity, and exactly one reply when a worker is lost."""

from __future__ import annotations

import gc
import shutil
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from runtime_fixtures import free_port, until

from dualhrq.runtime import protocol as p
from dualhrq.runtime.backend import HEARTBEAT, BrokerAddresses
from dualhrq.runtime.broker import Broker

MARKET = {"ts": 1, "last": 1.1, "bid": 1.0, "ask": 1.2, "prior_close": 1.1, "luld_tier": 1}


class FakeWorker:
    """A worker on the broker's backend that answers {id, worker: slot} at once, or holds every request
    until released (`answer=False`); `beat=False` registers once and then falls silent."""

    def __init__(self, backend: str, slot: str, *, answer: bool = True, beat: bool = True) -> None:
        self.slot, self.answer, self.beat = slot, answer, beat
        self.live_announced: list[int] = []
        self.held: list[list[bytes]] = []
        self._backend = backend
        self._release = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._backend)
        sock.send_multipart([b"", HEARTBEAT, self.slot.encode()])
        next_beat = time.monotonic() + 0.2
        while not self._stop.is_set():
            if self._release.is_set():
                for frames in self.held:
                    sock.send_multipart(self._reply(frames))
                self.held.clear()
                self._release.clear()
            if self.beat and time.monotonic() > next_beat:
                sock.send_multipart([b"", HEARTBEAT, self.slot.encode()])
                next_beat = time.monotonic() + 0.2
            if not sock.poll(20):
                continue
            frames = sock.recv_multipart()
            if not frames[0]:
                self.live_announced.append(int(frames[2]))
            elif self.answer:
                sock.send_multipart(self._reply(frames))
            else:
                self.held.append(frames)
        sock.close()
        ctx.term()

    def _reply(self, frames: list[bytes]) -> list[bytes]:
        return [*frames[:-1], msgpack.packb({"id": msgpack.unpackb(frames[-1])["id"], "worker": self.slot})]

    def release(self) -> None:
        self._release.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def broker():
    addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
    b = Broker(addresses, timeout_s=0.6).start()
    workers: list[FakeWorker] = []
    yield b, workers
    for w in workers:
        w.close()
    b.stop()
    shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)




class Gateway:
    """A DEALER client that sends raw request maps and collects every reply it gets."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, rid: str, instrument: str | None = None, market: bool = False, kind: str = "signal",
             session: str | None = None) -> None:
        body = {"type": kind if instrument else "ping", "id": rid, "fine": {"t": [1, 2]}}
        if instrument:
            body["instrument"] = instrument
        if session:
            body["session"] = session
        if market:
            body["market"] = MARKET
        self.sock.send(msgpack.packb(body))

    def collect(self, n: int, timeout_s: float = 5.0, settle_s: float = 0.3) -> list[dict]:
        """n replies, then whatever else arrives within settle_s (there must be nothing)."""
        out: list[dict] = []
        until = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < until:
            if self.sock.poll(50):
                out.append(msgpack.unpackb(self.sock.recv()))
        while self.sock.poll(int(settle_s * 1000)):
            out.append(msgpack.unpackb(self.sock.recv()))
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_every_request_of_an_instrument_goes_to_one_worker_and_only_a_lost_workers_move(broker):
    b, workers = broker
    workers += [FakeWorker(b.addresses.backend, f"w{i}") for i in range(3)]
    until(lambda: b.live == 3)
    gw = Gateway(b.addresses.frontend)
    instruments = [f"SYM{i}" for i in range(30)]
    for round_ in range(4):
        for sym in instruments:
            gw.send(f"{sym}-{round_}", sym)
    replies = gw.collect(4 * len(instruments))
    assert len(replies) == 4 * len(instruments)
    owner: dict[str, set[str]] = {}
    for r in replies:
        owner.setdefault(r["id"].split("-")[0], set()).add(r["worker"])
    assert all(len(w) == 1 for w in owner.values()), owner
    before = {sym: w.pop() for sym, w in owner.items()}
    assert len(set(before.values())) == 3  # hashing spreads 30 instruments over all three

    b.lost("w0")
    workers[0].close()
    until(lambda: b.live == 2)
    for sym in instruments:
        gw.send(f"{sym}-after", sym)
    after = {r["id"].split("-")[0]: r["worker"] for r in gw.collect(len(instruments))}
    gw.close()
    assert all(after[sym] == w for sym, w in before.items() if w != "w0")  # the survivors keep theirs
    assert {after[sym] for sym, w in before.items() if w == "w0"} <= {"w1", "w2"}
    # Requests without an instrument go round the live workers; the workers hear how many are live.
    assert workers[1].live_announced[-1] == 2


def test_an_append_that_would_reach_another_worker_than_its_streams_is_answered_resync_required(broker):
    b, workers = broker
    workers += [FakeWorker(b.addresses.backend, f"w{i}") for i in range(2)]
    until(lambda: b.live == 2)
    gw = Gateway(b.addresses.frontend)

    def ask(rid: str, kind: str) -> dict:
        gw.send(rid, "EURUSD", kind=kind, session="s1")
        (reply,) = gw.collect(1, settle_s=0.05)
        return reply

    owner = ask("open", "signal")["worker"]
    other = next(w for w in workers if w.slot != owner)
    assert ask("a1", "append")["worker"] == owner
    slot = int(owner[1:])
    b.lost(owner)  # the stream's worker goes: its instrument moves to the other
    workers[slot].close()
    until(lambda: b.live == 1)
    reply = ask("a2", "append")
    assert (reply.get("code"), reply.get("field")) == ("resync_required", "session")
    assert ask("reopen", "signal")["worker"] == other.slot
    assert ask("a3", "append")["worker"] == other.slot
    workers[slot] = FakeWorker(b.addresses.backend, owner)  # it comes back and takes its instrument back
    until(lambda: b.live == 2)
    assert ask("a4", "append").get("code") == "resync_required"
    assert ask("reopen-2", "signal")["worker"] == owner
    b.lost(owner)  # and goes again: the other worker's window of s1 is from before the stream came back
    workers[slot].close()
    until(lambda: b.live == 1)
    assert ask("a5", "append").get("code") == "resync_required"
    gw.send("plain", "EURUSD")  # a request without a session goes where its instrument goes, as ever
    assert gw.collect(1)[0]["worker"] == other.slot
    gw.close()


def test_a_lost_workers_requests_each_get_one_reply_resent_or_internal(broker):
    b, workers = broker
    holder = FakeWorker(b.addresses.backend, "w0", answer=False)
    workers.append(holder)
    until(lambda: b.live == 1)
    gw = Gateway(b.addresses.frontend)
    for i in range(10):
        gw.send(f"r{i}", "EURUSD", market=i % 2 == 0)
    gw.send("ping-1")
    req = gw.ctx.socket(zmq.REQ)  # a REQ client's envelope (with its empty delimiter) round-trips too
    req.setsockopt(zmq.LINGER, 0)
    req.connect(b.addresses.frontend)
    req.send(msgpack.packb({"type": "signal", "id": "req-1", "instrument": "EURUSD"}))
    until(lambda: len(holder.held) == 12)

    workers.append(FakeWorker(b.addresses.backend, "w1"))
    until(lambda: b.live == 2)
    b.lost("w0")
    holder.release()  # its late answers must not reach anyone: those requests were answered already
    replies = gw.collect(11)
    assert req.poll(5000)
    req_reply = msgpack.unpackb(req.recv())
    req.close()
    gw.close()

    assert sorted(r["id"] for r in replies) == sorted([f"r{i}" for i in range(10)] + ["ping-1"])
    by_id = {r["id"]: r for r in replies}
    for i in range(10):
        r = by_id[f"r{i}"]
        if i % 2 == 0:  # it may have passed the compliance gate: not re-sent, answered as lost
            err = p.decode_reply(msgpack.packb(r))
            assert isinstance(err, p.ErrorReply) and err.code == "internal" and "lost" in err.message
        else:
            assert r["worker"] == "w1"
    assert by_id["ping-1"]["worker"] == "w1"
    assert req_reply == {"id": "req-1", "worker": "w1"}


def test_a_silent_worker_is_lost_after_the_timeout_and_its_requests_answered(broker):
    b, workers = broker
    workers.append(FakeWorker(b.addresses.backend, "w0", answer=False, beat=False))
    until(lambda: b.live == 1)
    workers.append(FakeWorker(b.addresses.backend, "w1"))
    until(lambda: b.live == 2)
    gw = Gateway(b.addresses.frontend)
    for i in range(20):
        gw.send(f"r{i}", f"SYM{i}")
    replies = gw.collect(20)
    gw.close()
    assert sorted(r["id"] for r in replies) == sorted(f"r{i}" for i in range(20))
    assert {r["worker"] for r in replies} == {"w1"}
    assert b.live == 1


def test_a_body_the_broker_cannot_read_is_still_forwarded_and_answered(broker):
    b, workers = broker
    workers.append(FakeWorker(b.addresses.backend, "w0", answer=False))
    until(lambda: b.live == 1)
    gw = Gateway(b.addresses.frontend)
    gw.sock.send(b"\xc1 not msgpack")
    until(lambda: len(workers[0].held) == 1)
    b.lost("w0")  # no worker left to re-send to: the one reply is the error, with no id to repeat
    (reply,) = gw.collect(1)
    gw.close()
    err = p.decode_reply(msgpack.packb(reply))
    assert isinstance(err, p.ErrorReply) and err.id is None and err.code == "internal"


def test_real_workers_report_the_live_count_leave_when_stopping_and_re_register_after_a_broker_restart(
        tiny_config):
    from runtime_fixtures import ServerThread, fake_host, signal_body

    from dualhrq.config import ServeConfig
    from dualhrq.runtime.client import Client
    from dualhrq.runtime.server import Server

    addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
    serve = ServeConfig(drain_timeout_s=1.0)

    def worker(slot: str) -> ServerThread:
        return ServerThread(Server(serve, lambda path, hooks: fake_host(tiny_config, hooks), "b",
                                   connect=addresses.backend, slot=slot))

    b = Broker(addresses).start()
    try:
        second = worker("b")
        with worker("a"):
            second.__enter__()
            until(lambda: b.live == 2)
            with Client(addresses.frontend, timeout_s=5, retries=0) as c:
                until(lambda: c.ping().workers == 2)
                assert isinstance(c.request(signal_body("s1")), p.SignalReply)
            b.stop()
            b = Broker(addresses).start()  # a new broker on the same addresses: the workers find it by themselves
            until(lambda: b.live == 2)
            with Client(addresses.frontend, timeout_s=5, retries=0) as c:
                assert isinstance(c.request(signal_body("s2")), p.SignalReply)
            second.__exit__(None, None, None)  # a draining worker tells the broker to send it nothing new
            until(lambda: b.live == 1)
            with Client(addresses.frontend, timeout_s=5, retries=0) as c:
                until(lambda: c.ping().workers == 1)
    finally:
        b.stop()
        shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)



def test_the_broker_link_tells_the_server_after_every_call_on_their_shared_socket(tmp_path):
    """Its heartbeats share the worker's socket: each can take the descriptor's wake-up for a request, so the
    server is told to look again after each one."""
    from dualhrq.runtime.backend import BrokerLink

    ctx = zmq.Context.instance()
    back = ctx.socket(zmq.ROUTER)
    back.bind(f"ipc://{tmp_path}/back")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    looked: list[int] = []
    link = BrokerLink(f"ipc://{tmp_path}/back", "a")
    try:
        link.attach(sock, lambda: looked.append(1))  # registers: one send
        link.leave()
        assert len(looked) == 2
        assert back.poll(2000) and back.recv_multipart()[2:] == [HEARTBEAT, b"a"]
    finally:
        sock.close(0)
        back.close(0)


def test_a_client_address_in_use_is_a_configuration_error_naming_serve_bind():
    from dualhrq.errors import ConfigurationError

    taken = Broker(BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")).start()
    addresses = BrokerAddresses.local(taken.addresses.frontend)
    try:
        with pytest.raises(ConfigurationError, match=r"serve.bind .*cannot listen on 'tcp://127.0.0.1:\d+'"):
            Broker(addresses).start()
    finally:
        taken.stop()
        for a in (addresses, taken.addresses):
            shutil.rmtree(Path(a.backend.removeprefix("ipc://")).parent, ignore_errors=True)


def _remote_broker_ports() -> tuple[int, int]:
    """A backend port whose next two are free too (a remote broker's control bus), and a frontend port apart
    from all three."""
    import socket

    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port + 1))
                b.bind(("127.0.0.1", port + 2))
        except OSError:
            continue
        frontend = free_port()
        if frontend not in range(port, port + 3):
            return port, frontend
    raise AssertionError("no three consecutive free ports")


def test_a_tcp_backend_takes_only_workers_holding_the_control_key(tiny_config):
    from runtime_fixtures import ServerThread, fake_host, signal_body

    from dualhrq.config import ServeConfig
    from dualhrq.errors import ConfigurationError
    from dualhrq.runtime.backend import BackendKeys, BrokerLink
    from dualhrq.runtime.client import Client
    from dualhrq.runtime.server import Server

    key = b"k" * 32
    backend, frontend = _remote_broker_ports()
    addresses = BrokerAddresses.remote(f"tcp://127.0.0.1:{backend}", frontend=f"tcp://127.0.0.1:{frontend}")
    with pytest.raises(ConfigurationError, match="--connect: .* tcp:// backend"):
        BrokerLink(addresses.backend, "keyless")
    serve = ServeConfig(drain_timeout_s=1.0)
    worker = Server(serve, lambda path, hooks: fake_host(tiny_config, hooks), "b", connect=addresses.backend,
                    slot="a", backend_keys=BackendKeys.derive(key))
    ctx = zmq.Context()
    intruders = []
    right = BackendKeys.derive(key)
    public, secret = zmq.curve_keypair()
    foreign = BackendKeys(right.server_public, right.server_secret, public, secret)  # the broker's key, not a worker's
    # One in plain ZMTP, one with keys of another control key, one that knows the broker's public key but holds a
    # client pair of its own: only the worker key check refuses that one.
    for keys in (None, BackendKeys.derive(b"x" * 32), foreign):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.connect(sock)
        sock.connect(addresses.backend)
        intruders.append(sock)
    b = Broker(addresses, control_key=key).start()
    try:
        with ServerThread(worker):
            until(lambda: b.live == 1)
            for sock in intruders:
                sock.send_multipart([b"", HEARTBEAT, b"intruder"], zmq.NOBLOCK)
            with Client(addresses.frontend, timeout_s=5, retries=0) as c:
                replies = [c.request(signal_body(f"r{i}", instrument=f"SYM{i}")) for i in range(8)]
            assert b.live == 1 and all(isinstance(r, p.SignalReply) for r in replies)
            assert not any(sock.poll(200) for sock in intruders)  # no request reached them, nor a heartbeat
    finally:
        for sock in intruders:
            sock.close()
        ctx.term()
        b.stop()


def test_what_the_broker_holds_once_started_is_out_of_the_cyclic_collectors_reach(broker):
    """A full collection would traverse the process's ~100k objects, holding the GIL the routing thread needs."""
    b, _ = broker
    assert not any(o is b for o in gc.get_objects())
