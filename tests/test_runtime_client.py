"""The gateway client: ids, timeouts, Lazy Pirate retries (idempotent requests only), fallback to HOLD."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import msgpack
import pytest
import zmq
from runtime_fixtures import ServerThread, fake_host, free_port, signal_body

from dualhrq.config import ServeConfig
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import AsyncClient, Client, RequestFailed, RequestTimeout
from dualhrq.runtime.server import Server


class SilentPeer:
    """A ROUTER that counts what it receives and never answers (a hung or dead server)."""

    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.bodies: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(self.address)
        self._ready.set()
        while not self._stop.is_set():
            if sock.poll(20):
                self.bodies.append(msgpack.unpackb(sock.recv_multipart()[-1]))
        sock.close(0)
        ctx.term()

    def __enter__(self) -> SilentPeer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def test_idempotent_requests_are_retried_with_the_same_id_then_time_out():
    with SilentPeer() as peer, Client(peer.address, timeout_s=0.2, retries=2) as c:
        with pytest.raises(RequestTimeout):
            c.ping()
        time.sleep(0.1)
    assert len(peer.bodies) == 3 and len({b["id"] for b in peer.bodies}) == 1


def test_admin_commands_are_never_retried():
    with SilentPeer() as peer, Client(peer.address, timeout_s=0.2, retries=3) as c:
        with pytest.raises(RequestTimeout):
            c.admin("kill_switch_on", token="t")
        time.sleep(0.1)
    assert [b["cmd"] for b in peer.bodies] == ["kill_switch_on"]


def test_lazy_pirate_reaches_a_server_that_starts_late(tiny_config):
    port = free_port()
    server = Server(ServeConfig(bind=f"tcp://127.0.0.1:{port}"), lambda path, hooks: fake_host(tiny_config, hooks),
                    "b")
    st = ServerThread(server)
    starter = threading.Timer(0.4, st.__enter__)
    starter.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=0.25, retries=20) as c:
            assert c.ping().ready
    finally:
        starter.join()
        st.__exit__(None, None, None)


def test_fallback_hold_turns_a_timeout_into_hold():
    with SilentPeer() as peer, Client(peer.address, timeout_s=0.1, retries=0, fallback="hold") as c:
        body = signal_body()
        reply = c.signal("X", "1h", body["coarse"], body["fine"])
    assert (reply.action, reply.quantity, reply.model) == ("HOLD", 0.0, "fallback")
    assert reply.compliance.reasons == ["fallback:timeout"]


def test_fallback_hold_turns_an_error_reply_into_hold_but_only_for_signals(tiny_config):
    server = Server(ServeConfig(bind="tcp://127.0.0.1:*"), lambda path, hooks: fake_host(tiny_config, hooks), "b")
    with ServerThread(server) as st, Client(st.address, fallback="hold") as c:
        body = signal_body(n_fine=3)  # too few bars
        reply = c.signal("X", "1h", body["coarse"], body["fine"])
        assert reply.action == "HOLD" and reply.compliance.reasons == ["fallback:invalid_input"]
        with pytest.raises(RequestFailed):
            c.admin("stats", token="nope")


def test_the_async_client_matches_concurrent_replies_by_id(tiny_config):
    server = Server(ServeConfig(bind="tcp://127.0.0.1:*"), lambda path, hooks: fake_host(tiny_config, hooks), "b")

    async def go(address):
        async with AsyncClient(address, timeout_s=5) as c:
            bodies = [signal_body(instrument="I" * (1 + i % 7)) for i in range(30)]
            return bodies, await asyncio.gather(*(c.request(b) for b in bodies))

    with ServerThread(server) as st:
        bodies, replies = asyncio.run(go(st.address))
    # The fake engine's BUY logit is the instrument id (its name's length): each reply answers its own request.
    assert all(isinstance(r, p.SignalReply) for r in replies)
    want = [math.exp(len(b["instrument"])) / (math.exp(len(b["instrument"])) + 4) for b in bodies]
    assert [r.probs[0] for r in replies] == pytest.approx(want)
    assert len({r.id for r in replies}) == 30


def test_the_async_client_times_out_and_falls_back():
    async def go(address):
        async with AsyncClient(address, timeout_s=0.1, retries=1, fallback="hold") as c:
            body = signal_body()
            return await c.signal("X", "1h", body["coarse"], body["fine"])

    with SilentPeer() as peer:
        reply = asyncio.run(go(peer.address))
        time.sleep(0.1)
    assert reply.action == "HOLD" and len(peer.bodies) == 2


class _NoPeerClient(Client):
    """A client whose DEALER refuses to queue without a connected peer, as after a rejected CURVE handshake."""

    def _socket(self, ctx):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.address)
        return sock


@pytest.mark.timeout(30)
def test_a_send_that_cannot_be_queued_times_out_instead_of_hanging():
    with _NoPeerClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=0.2, retries=1) as c:
        with pytest.raises(RequestTimeout):
            c.ping()
