"""The gateway client: ids, timeouts, Lazy Pirate retries (requests safe to repeat only), fallback to HOLD, replies
without an id or of no protocol, and streams."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from runtime_fixtures import ScriptedPeer, ServerThread, fake_host, free_port, signal_body

from dualhrq.config import ServeConfig
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import AsyncClient, BadReply, Client, RequestFailed, RequestTimeout, hold_reply
from dualhrq.runtime.server import Server


def test_idempotent_requests_are_retried_with_the_same_id_then_time_out():
    with ScriptedPeer() as peer, Client(peer.address, timeout_s=0.2, retries=2) as c:
        with pytest.raises(RequestTimeout):
            c.ping()
        time.sleep(0.1)
    assert len(peer.bodies) == 3 and len({b["id"] for b in peer.bodies}) == 1


def test_admin_commands_are_never_retried():
    with ScriptedPeer() as peer, Client(peer.address, timeout_s=0.2, retries=3) as c:
        with pytest.raises(RequestTimeout):
            c.admin("kill_switch_on", token="t")
        time.sleep(0.1)
    assert [b["cmd"] for b in peer.bodies] == ["kill_switch_on"]


def test_a_signal_carrying_market_is_never_retried_since_the_gate_would_decide_it_twice():
    market = {"ts": 1, "last": 10.0, "bid": 9.99, "ask": 10.01, "prior_close": 10.0}
    with ScriptedPeer() as peer, Client(peer.address, timeout_s=0.2, retries=3) as c:
        with pytest.raises(RequestTimeout, match="x 1 attempts"):
            c.request({**signal_body(), "market": market})
        with pytest.raises(RequestTimeout, match="x 4 attempts"):  # without it, a repeat is harmless
            c.request(signal_body())
        time.sleep(0.1)
    assert ["market" in b for b in peer.bodies] == [True] + [False] * 4


def test_numpy_numbers_in_a_request_are_sent_as_the_numbers_they_hold():
    market = {"ts": np.int64(1), "last": np.float64(10.0), "bid": np.float32(9.5), "ask": 10.01, "prior_close": 10.0}
    with ScriptedPeer() as peer, Client(peer.address, timeout_s=0.2, retries=0) as c:
        with pytest.raises(RequestTimeout):
            c.request({**signal_body(), "market": market})
        time.sleep(0.1)
    assert peer.bodies[0]["market"] == {"ts": 1, "last": 10.0, "bid": 9.5, "ask": 10.01, "prior_close": 10.0}


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
    with ScriptedPeer() as peer, Client(peer.address, timeout_s=0.1, retries=0, fallback="hold") as c:
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

    with ScriptedPeer() as peer:
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


def _oversized_server(tiny_config) -> Server:
    return Server(ServeConfig(bind="tcp://127.0.0.1:*", max_body_bytes=2000),
                  lambda path, hooks: fake_host(tiny_config, hooks), "b")


def test_an_oversized_signal_gets_its_bad_request_at_once_in_either_client(tiny_config):
    """The server answers a body over max_body_bytes with a null id: the request alone in flight is its owner,
    and a bad_request is not retried (before: three timeouts, then RequestTimeout)."""
    big = signal_body(n_fine=200)

    async def go(address):
        async with AsyncClient(address, timeout_s=2.0, retries=2) as c:
            return await c.request(big)

    with ServerThread(_oversized_server(tiny_config)) as st, Client(st.address, timeout_s=2.0, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(RequestFailed) as sync_error:
            c.request(big)
        with pytest.raises(RequestFailed) as async_error:
            asyncio.run(go(st.address))
        elapsed = time.monotonic() - t0
        assert c.ping().ready  # the client goes on as before
    assert sync_error.value.code == async_error.value.code == "bad_request"
    assert "exceeds the maximum of 2000" in str(sync_error.value)
    assert elapsed < 2.0  # neither waited out a timeout


def test_with_several_requests_out_a_reply_without_id_is_nobodys_and_the_rest_are_answered(caplog):
    def respond(bodies):
        if len(bodies) < 2:
            return []  # both requests are out before any reply comes back
        small = next(b for b in bodies if b["instrument"] == "SMALL")
        return [p.encode(p.ErrorReply(id=None, code="bad_request", message="body too large")),
                p.encode(hold_reply(small["id"], "test"))]

    async def go(address):
        async with AsyncClient(address, timeout_s=0.5, retries=0) as c:
            return await asyncio.gather(c.request(signal_body(instrument="BIG")),
                                        c.request(signal_body(instrument="SMALL")), return_exceptions=True)

    with ScriptedPeer(respond) as peer:
        big, small = asyncio.run(go(peer.address))
    assert isinstance(big, RequestTimeout)  # could have been either's: given to neither, and said so
    assert "a reply without a readable id while 2 requests are outstanding: dropped" in caplog.text
    assert isinstance(small, p.SignalReply) and small.compliance.reasons == ["fallback:test"]


@pytest.mark.parametrize("reply", [lambda rid: b"\xc1 not msgpack",
                                   lambda rid: msgpack.packb({"type": "surprise", "id": rid})])
def test_a_reply_of_no_protocol_is_a_bad_reply_in_either_client_and_hold_with_the_fallback(reply):
    """An undecodable reply, with the request's id or none readable, ends that request with an HRMError naming the
    problem (before: a raw msgspec error in Client, a timeout in AsyncClient), never retried."""
    def respond(bodies):
        return [reply(bodies[-1]["id"])]

    async def go(address, **kw):
        async with AsyncClient(address, timeout_s=2.0, retries=2, **kw) as c:
            return await c.ping() if not kw else await c.request(signal_body())

    with ScriptedPeer(respond) as peer, Client(peer.address, timeout_s=2.0, retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(BadReply, match="not a protocol v1 reply"):
            c.ping()
        with pytest.raises(BadReply, match="not a protocol v1 reply"):
            asyncio.run(go(peer.address))
        held = asyncio.run(go(peer.address, fallback="hold"))
        elapsed = time.monotonic() - t0
    assert held.action == "HOLD" and held.compliance.reasons == ["fallback:bad_reply"]
    assert len(peer.bodies) == 3 and elapsed < 2.0


def test_an_append_is_retried_like_a_signal_and_the_timeout_counts_every_attempt():
    def respond(bodies):  # the stream's opening signal is answered, then the server goes silent
        return [p.encode(hold_reply(bodies[0]["id"], "test"))] if len(bodies) == 1 else []

    fine = signal_body(n_fine=13)["fine"]
    coarse = signal_body()["coarse"]
    with ScriptedPeer(respond) as peer, Client(peer.address, timeout_s=0.2, retries=2) as c:
        stream = c.stream("EURUSD", "1h")
        stream.signal(coarse, _rows(fine, 0, 12))
        with pytest.raises(RequestTimeout, match="x 3 attempts"):
            stream.signal(coarse, _rows(fine, 1, 13))
        time.sleep(0.1)
    assert [b["type"] for b in peer.bodies] == ["signal", "append", "append", "append"]
    assert len({b["id"] for b in peer.bodies[1:]}) == 1


def _rows(bars: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in bars.items()}


def test_a_stream_whose_whole_window_failed_sends_it_whole_next_time_not_an_append_first():
    """After an append's resync_required, the whole window that followed failed: the server may hold nothing of
    the stream, so the next call sends the whole window again (before: an append, resync_required, then the
    whole window: a round trip more)."""
    def respond(bodies):
        rid = bodies[-1]["id"]
        script = [hold_reply(rid, "test"), p.ErrorReply(rid, "resync_required", "not open", "session"),
                  p.ErrorReply(rid, "internal", "engine failed")]
        return [p.encode(script[len(bodies) - 1] if len(bodies) <= len(script) else hold_reply(rid, "test"))]

    fine = signal_body(n_fine=14)["fine"]
    coarse = signal_body()["coarse"]
    with ScriptedPeer(respond) as peer, Client(peer.address, timeout_s=2.0) as c:
        stream = c.stream("EURUSD", "1h")
        stream.signal(coarse, _rows(fine, 0, 12))
        with pytest.raises(RequestFailed, match="internal"):
            stream.signal(coarse, _rows(fine, 1, 13))
        assert stream.signal(coarse, _rows(fine, 2, 14)).action == "HOLD"
    assert [b["type"] for b in peer.bodies] == ["signal", "append", "signal", "signal"]
    assert stream.resyncs == 1
