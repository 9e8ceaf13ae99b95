"""The server over real ZeroMQ on loopback: replies, deadlines, shedding, admin, reload, drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time

import msgspec
import pytest
from runtime_fixtures import CountingEngine, ServerThread, fake_host, signal_body, until

from dualhrq.compliance.gate import ComplianceGate
from dualhrq.config import ServeConfig
from dualhrq.runtime import protocol as p
from dualhrq.runtime.backend import AdminState
from dualhrq.runtime.client import AsyncClient, Client, RequestFailed
from dualhrq.runtime.server import Server

TOKEN = "s3cret"


def serve_config(**over) -> ServeConfig:
    return ServeConfig(bind="tcp://127.0.0.1:*", admin_tokens=[TOKEN], drain_timeout_s=2.0, **over)


def server_for(tiny_config, serve=None, **host_kw) -> Server:
    return Server(serve or serve_config(), lambda path, hooks: fake_host(tiny_config, hooks, name=path, **host_kw),
                  "fake-1")


def test_ping_reports_ready_model_needs_and_rules_version(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        pong = c.ping()
    assert pong.ready and pong.model == "fake-1"
    assert (pong.needs.coarse, pong.needs.fine) == (5, 10)
    assert pong.rules_version


def test_signal_reply_carries_every_field_and_stage_timings(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        body = signal_body()
        reply = c.signal(body["instrument"], body["timeframe"], body["coarse"], body["fine"])
    assert isinstance(reply, p.SignalReply)
    assert reply.action in p.ACTIONS and len(reply.probs) == 5 and abs(sum(reply.probs) - 1) < 1e-6
    assert reply.act == p.Act(1, "q")
    assert reply.patterns == p.Patterns(0, True, "disabled")  # this host has no pattern library
    assert reply.compliance.allowed and reply.compliance.original_action == reply.action
    t = reply.timing_us
    assert t.total >= t.decode + t.features + t.retrieval + t.queue + t.engine - 5 and t.engine > 0


def test_a_bad_request_gets_its_code_field_and_id(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        body = signal_body()
        body["fine"]["c"][3] = -1.0
        with pytest.raises(RequestFailed) as e:
            c.request(body)
    assert (e.value.code, e.value.field) == ("invalid_input", "fine.c[3]")


def test_too_few_bars_for_the_model_is_invalid_input(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        with pytest.raises(RequestFailed) as e:
            c.request(signal_body(n_fine=9))
    assert (e.value.code, e.value.field) == ("invalid_input", "fine")


def test_deadline_exceeded_is_answered_when_the_deadline_passes_not_when_the_engine_finishes(tiny_config):
    server = server_for(tiny_config, engine=CountingEngine(delay_s=0.5), max_batch=1)
    with ServerThread(server) as st, Client(st.address, timeout_s=5, retries=0) as c:
        start = time.monotonic()
        with pytest.raises(RequestFailed) as e:
            c.request(signal_body(deadline_ms=30.0))
        waited = time.monotonic() - start
    assert e.value.code == "deadline_exceeded"
    assert waited < 0.4  # generous: the point is it did not wait for the 0.5 s engine


def test_overloaded_is_immediate_when_the_queue_is_full_and_everyone_gets_one_reply(tiny_config):
    # The engine holds every call until the first refusal is back: the queue is full however the requests
    # and the server's wake-ups interleave, and the refusal came while the engine was still busy.
    gate = threading.Event()
    # On the inference thread: a request alone would otherwise run inline and hold the loop with the engine.
    server = server_for(tiny_config, serve_config(inline_engine=False), engine=CountingEngine(gate=gate),
                        max_batch=1, queue_max=2)

    async def burst(address):
        async with AsyncClient(address, timeout_s=10, retries=0) as c:
            async def one():
                try:
                    return await c.request(signal_body())
                except RequestFailed as e:
                    gate.set()
                    return e
            return await asyncio.gather(*(one() for _ in range(12)), return_exceptions=True)

    with ServerThread(server) as st:
        results = asyncio.run(burst(st.address))
    gate.set()
    codes = [r.code if isinstance(r, RequestFailed) else repr(r) for r in results if not isinstance(r, p.SignalReply)]
    ok = [r for r in results if isinstance(r, p.SignalReply)]
    assert len(ok) + len(codes) == 12
    assert "overloaded" in codes and ok  # some shed at once, the rest served
    assert set(codes) == {"overloaded"}


def test_admin_without_a_valid_token_is_unauthorized(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        for token in ("", "wrong"):
            with pytest.raises(RequestFailed) as e:
                c.admin("kill_switch_on", token=token)
            assert e.value.code == "unauthorized"
        assert c.admin("stats", token=TOKEN).ok


def test_kill_switch_makes_every_signal_hold_within_a_second(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        body = signal_body(instrument="ZZZZZZ")  # instrument id 6: BUY wins without the switch
        assert c.request(body).action == "BUY"
        assert c.admin("kill_switch_on", token=TOKEN).detail == {"kill_switch": True}
        start = time.monotonic()
        held = c.request(body)
        assert time.monotonic() - start < 1.0
        assert (held.action, held.quantity) == ("HOLD", 0.0)
        assert held.compliance == p.Compliance(False, "BUY", ["kill_switch"])
        market = {"ts": 1_700_000_000_000_000_000, "last": 10.0, "bid": 9.99, "ask": 10.01, "prior_close": 10.0,
                  "luld_tier": 1}
        assert c.request({**body, "market": market}).compliance.reasons == ["kill_switch"]
        c.admin("kill_switch_off", token=TOKEN)
        assert c.request(body).action == "BUY"


class RecordingGate(ComplianceGate):
    def check(self, instrument, action, quantity, market, position=None):  # noqa: ANN001, ANN201
        self.seen = (market, position)
        return super().check(instrument, action, quantity, market, position)


def test_market_position_and_ssr_indicator_reach_the_gate(tiny_config):
    gate = RecordingGate()
    server = Server(serve_config(), lambda path, hooks: fake_host(tiny_config, hooks, name=path), "fake-1", gate=gate)
    market = {"ts": 1_700_000_000_000_000_000, "last": 10.0, "bid": 9.99, "ask": 10.01, "prior_close": 10.0,
              "luld_tier": 1}
    with ServerThread(server) as st, Client(st.address) as c:
        c.request({**signal_body(), "market": market})
        assert (gate.seen[0].ssr_active, gate.seen[1]) == (False, None)
        c.request({**signal_body(), "market": {**market, "position": 2.5, "ssr_active": True}})
        assert (gate.seen[0].ssr_active, gate.seen[1]) == (True, 2.5)


def test_stats_returns_counters(tiny_config):
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        c.ping()
        c.request(signal_body())
        stats = c.admin("stats", token=TOKEN).detail
    assert stats["model"] == "fake-1" and stats["ready"]
    assert stats["counters"]["dualhrq_requests_total|code=ok|type=signal"] == 1
    assert stats["counters"]["dualhrq_requests_total|code=ok|type=ping"] == 1


def test_reload_swaps_the_model_with_requests_in_flight_and_none_fails(tiny_config):
    server = server_for(tiny_config, engine=None)

    async def traffic(address):
        async with AsyncClient(address, timeout_s=10, retries=0) as c:
            reloaded = asyncio.Event()

            async def stream():  # requests keep coming through the swap, and a few after it
                replies = [await c.request(signal_body())]
                while not reloaded.is_set():
                    replies.append(await c.request(signal_body()))
                return replies + [await c.request(signal_body()) for _ in range(3)]

            async def reload_midway():
                await asyncio.sleep(0.05)
                try:
                    return await c.admin("reload", token=TOKEN, bundle="fake-2")
                finally:
                    reloaded.set()

            *streams, reload = await asyncio.gather(stream(), stream(), stream(), reload_midway())
            return [r for s in streams for r in s], reload

    with ServerThread(server) as st:
        replies, reload = asyncio.run(traffic(st.address))
        with Client(st.address) as c:
            assert c.ping().model == "fake-2"
    assert reload.ok and reload.detail["previous"] == "fake-1"
    assert all(isinstance(r, p.SignalReply) for r in replies)  # none failed
    assert {r.model for r in replies} == {"fake-1", "fake-2"}


def test_a_reload_that_comes_back_as_its_own_echo_loads_only_if_another_came_between(tiny_config):
    loaded: list[str] = []

    def loader(path, hooks):
        loaded.append(path)
        return fake_host(tiny_config, hooks, name=path)

    server = Server(serve_config(), loader, "fake-1")
    with ServerThread(server) as st:
        def apply(*args):
            return asyncio.run_coroutine_threadsafe(server._admin.apply(*args), st.loop).result(10)

        def latest() -> bool:
            return True  # no later reload of this worker's

        apply("reload", "fake-2")  # this worker's own command
        apply("reload", "fake-2", latest)  # its echo: already held
        apply("reload", "fake-3")  # a sibling's, relayed
        apply("reload", "fake-2", latest)  # an echo of this worker's, which the broker ordered after the sibling's
        with Client(st.address) as c:
            assert c.ping().model == "fake-2"
    assert loaded == ["fake-1", "fake-2", "fake-3", "fake-2"]


def test_an_echo_of_a_reload_that_arrives_while_a_later_reload_loads_does_not_load_the_earlier_bundle(tiny_config):
    loading, release = threading.Event(), threading.Event()
    loaded: list[str] = []

    def loader(path, hooks):
        if path == "fake-3":
            loading.set()
            release.wait(10)  # a bundle that takes a while to load and warm
        loaded.append(path)
        return fake_host(tiny_config, hooks, name=path)

    class Bus(_QuietRelay):
        published: list[str] = []

        def publish(self, cmd: str, bundle: str = ""):
            self.published.append(bundle)
            return super().publish(cmd, bundle)

    bus = Bus()
    server = Server(serve_config(), loader, "fake-1", control=bus)
    with ServerThread(server) as st, Client(st.address) as c:
        assert c.admin("reload", token=TOKEN, bundle="fake-2").ok
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            later = pool.submit(c.admin, "reload", token=TOKEN, bundle="fake-3")
            assert loading.wait(10)
            # fake-2's echo comes back from the broker while fake-3 loads: it waits for the reload lock
            echo = asyncio.run_coroutine_threadsafe(
                server._admin.apply("reload", "fake-2", lambda: bus.published[-1] == "fake-2"), st.loop)
            release.set()
            assert later.result(10).ok
            echo.result(10)
        assert c.ping().model == "fake-3"
    assert loaded == ["fake-1", "fake-2", "fake-3"]


def test_an_admin_command_the_broker_never_passes_on_is_applied_here_and_says_it_was_not_relayed(tiny_config):
    class Unheard(_QuietRelay):
        def publish(self, cmd: str, bundle: str = ""):
            return asyncio.get_running_loop().create_future()  # PUB dropped it: no echo ever comes back

    server = Server(serve_config(), lambda path, hooks: fake_host(tiny_config, hooks), "fake", control=Unheard())
    with ServerThread(server) as st, Client(st.address) as c:
        reply = c.admin("kill_switch_on", token=TOKEN)
        assert reply.ok and reply.detail == {"kill_switch": True, "relayed": False}
        assert server._gate.kill_switch


def test_stop_answers_what_is_in_flight_then_returns_zero(tiny_config):
    gate = threading.Event()  # the engine holds every call until the stop has been asked for
    server = server_for(tiny_config, serve_config(inline_engine=False), engine=CountingEngine(gate=gate),
                        max_batch=1)  # on the inference thread: one request alone must not hold the loop

    async def inflight(address, st):
        async with AsyncClient(address, timeout_s=10, retries=0) as c:
            pending = [asyncio.create_task(c.request(signal_body())) for _ in range(5)]
            await asyncio.to_thread(until, lambda: server._in_flight == 5)
            server.stop()
            gate.set()
            return await asyncio.gather(*pending, return_exceptions=True)

    st = ServerThread(server)
    with st:
        results = asyncio.run(inflight(st.address, st))
    gate.set()
    assert all(isinstance(r, p.SignalReply) for r in results)
    assert st.exit_code == 0


def test_replies_are_plain_msgpack_maps(tiny_config):
    import msgpack
    import zmq

    with ServerThread(server_for(tiny_config)) as st:
        ctx = zmq.Context()
        s = ctx.socket(zmq.REQ)
        s.connect(st.address)
        s.send(msgspec.msgpack.encode({"type": "ping", "id": "x"}))
        assert s.poll(5000)
        reply = msgpack.unpackb(s.recv())
        s.close(0)
        ctx.term()
    assert reply["type"] == "pong" and reply["id"] == "x"


def test_a_reply_to_a_vanished_client_is_counted_and_never_blocks(tiny_config):
    import zmq

    gate = threading.Event()  # the engine holds the ghost's request until its client has gone
    server = server_for(tiny_config, engine=CountingEngine(gate=gate), max_batch=1)
    with ServerThread(server) as st:
        ctx = zmq.Context()
        gone = ctx.socket(zmq.DEALER)
        gone.setsockopt(zmq.LINGER, 0)
        gone.connect(st.address)
        gone.send(msgspec.msgpack.encode(signal_body("ghost")))
        until(lambda: server._in_flight == 1)
        gone.close()  # its reply will find nobody
        ctx.term()
        time.sleep(0.2)  # the server's socket sees the peer go
        gate.set()
        with Client(st.address, timeout_s=5) as c:
            assert isinstance(c.request(signal_body()), p.SignalReply)  # the server carried on
            counters = c.admin("stats", token=TOKEN).detail["counters"]
    assert counters["dualhrq_undeliverable_replies_total"] == 1


def test_prometheus_metrics_are_served_on_the_metrics_port(tiny_config):
    import urllib.request

    from runtime_fixtures import free_port

    port = free_port()
    with ServerThread(server_for(tiny_config, serve_config(metrics_port=port))) as st, Client(st.address) as c:
        c.ping()
        c.request(signal_body())
        with pytest.raises(RequestFailed):
            c.request(signal_body(v=3))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ('dualhrq_requests_total{code="ok",type="ping"} 1.0',
                 'dualhrq_requests_total{code="ok",type="signal"} 1.0',
                 'dualhrq_requests_total{code="unsupported_version",type="signal"} 1.0',
                 'dualhrq_fail_open_total{reason="disabled"} 1.0',
                 'dualhrq_stage_seconds_count{stage="engine"} 1.0',
                 'dualhrq_batch_size_count', 'dualhrq_queue_depth', 'dualhrq_in_flight',
                 'dualhrq_undeliverable_replies_total 0.0', 'dualhrq_ready 1.0'):
        assert line in text, line



def test_a_request_whose_wake_up_another_socket_call_took_is_still_taken_and_in_arrival_order():
    """The socket's descriptor is edge-triggered: any call on the socket (a send, a heartbeat, a poll) can take
    the wake-up of a request that arrived meanwhile. The loop looks again, so it is not left waiting."""
    import zmq

    server = Server(ServeConfig(bind="tcp://127.0.0.1:*"), lambda path, hooks: None, "b")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    taken: list[bytes] = []

    async def handle(frames: list, t0: float) -> None:
        taken.append(frames[-1])
        server._in_flight -= 1

    server._handle = handle  # type: ignore[method-assign]

    async def main() -> None:
        server._loop, server._sock = asyncio.get_running_loop(), sock
        receiving = asyncio.create_task(server._receive())
        await asyncio.sleep(0.05)
        client.send(b"first")
        client.send(b"second")
        assert sock.poll(1000)  # a call on the socket: it takes the descriptor's wake-up for both
        await asyncio.sleep(0.5)
        server._stopping.set()
        await receiving

    try:
        asyncio.run(main())
    finally:
        client.close(0)
        sock.close(0)
    assert taken == [b"first", b"second"] and server._in_flight == 0


def test_a_burst_beyond_the_in_flight_limit_admits_the_first_to_arrive(tiny_config):
    import msgpack
    import zmq

    # The engine holds its first call until the burst's refusals are back: the first two stay in flight
    # however the sends and the server's wake-ups interleave.
    gate = threading.Event()
    serve = serve_config(max_in_flight=2, inline_engine=False)  # alone, one would run inline and hold the loop
    server = server_for(tiny_config, serve, engine=CountingEngine(gate=gate), max_batch=1, queue_max=100)
    with ServerThread(server) as st:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(st.address)
        for i in range(6):
            sock.send_multipart([b"", msgpack.packb(signal_body(f"r{i}"))])
        replies = {}
        while len(replies) < 6 and sock.poll(5000):
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            replies[reply["id"]] = reply.get("code", reply["type"])
            if len(replies) == 4:
                gate.set()
        gate.set()
        sock.close()
    assert replies == {"r0": "signal", "r1": "signal", **{f"r{i}": "overloaded" for i in range(2, 6)}}


# ---------------------------------------------------------------- start-up errors, shutdown


def _listening_port() -> tuple[object, int]:
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    return blocker, blocker.getsockname()[1]


def test_an_address_in_use_is_a_configuration_error_naming_serve_bind_before_the_model_loads():
    from dualhrq.errors import ConfigurationError

    blocker, port = _listening_port()
    loaded: list[str] = []
    server = Server(ServeConfig(bind=f"tcp://127.0.0.1:{port}"), lambda path, hooks: loaded.append(path), "b")
    try:
        with pytest.raises(ConfigurationError, match="serve.bind"):
            asyncio.run(server.run(handle_signals=False))
        with pytest.raises(ConfigurationError, match="serve.bind"):  # malformed
            asyncio.run(Server(ServeConfig(bind="tcp://127.0.0.1:notaport"), lambda path, hooks: None, "b").run(
                handle_signals=False))
    finally:
        blocker.close()
    assert loaded == []


def test_a_metrics_port_in_use_is_a_configuration_error_naming_serve_metrics_port(tiny_config):
    from dualhrq.errors import ConfigurationError

    blocker, port = _listening_port()
    try:
        with pytest.raises(ConfigurationError, match="serve.metrics_port"):
            asyncio.run(server_for(tiny_config, serve_config(metrics_port=port)).run(handle_signals=False))
    finally:
        blocker.close()


def test_the_metrics_endpoint_stops_with_the_server(tiny_config):
    import urllib.error
    import urllib.request

    from runtime_fixtures import free_port

    port = free_port()
    with ServerThread(server_for(tiny_config, serve_config(metrics_port=port))):
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_one_servers_readyz_follows_its_readiness_and_livez_its_life(tiny_config):
    """Before, /readyz and /livez of a single server (no --workers) answered with the metrics page: 200 even
    while it drained."""
    import urllib.error
    import urllib.request

    from runtime_fixtures import free_port

    def status(port: int, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    port = free_port()
    with ServerThread(server_for(tiny_config, serve_config(metrics_port=port))) as st:
        assert (status(port, "/readyz"), status(port, "/livez")) == (200, 200)
        st.server.ready = False  # as from the first moment of a drain
        assert (status(port, "/readyz"), status(port, "/livez")) == (503, 200)
        assert b"dualhrq_ready" in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        st.server.ready = True


def test_an_append_whose_coarse_t_is_empty_but_another_column_is_not_is_invalid_input(tiny_config):
    from types import SimpleNamespace

    from runtime_fixtures import _warm_bars

    host = fake_host(tiny_config)
    fine = p.WireBars(**{k: v[-1:] for k, v in signal_body()["fine"].items()})
    window_coarse, window_fine = _warm_bars(host.needs)  # the bars of the window the stand-in stream holds
    window = SimpleNamespace(no_coarse="no coarse bars", extend=lambda coarse, fine: SimpleNamespace(
        added=coarse, coarse=window_coarse, fine=window_fine))
    empty = p.WireBars([], [], [], [], [], [])
    assert host.extend(window, p.Append(id="a0", instrument="X", session="s", fine=fine, coarse=empty)).added == \
        "no coarse bars"
    lopsided = p.WireBars(t=[], o=[1.0], h=[1.0], l=[1.0], c=[1.0], v=[1.0])
    with pytest.raises(p.ProtocolError) as e:
        host.extend(window, p.Append(id="a1", instrument="X", session="s", fine=fine, coarse=lopsided))
    assert e.value.code == "invalid_input" and e.value.field.startswith("coarse")


class _ClosingEngine(CountingEngine):
    """Records its close; `close_s` makes the close take that long."""

    def __init__(self, close_s: float = 0.0, on_close=lambda: None, **kw) -> None:
        super().__init__(**kw)
        self.closed, self._close_s, self._on_close = False, close_s, on_close

    def close(self) -> None:
        self.closed = True
        self._on_close()
        time.sleep(self._close_s)


class _QuietRelay:
    """A control bus with no siblings: the default admin state, nothing to relay; tests script `listen`."""

    def publish(self, cmd: str, bundle: str = "") -> asyncio.Future[None]:
        relayed = asyncio.get_running_loop().create_future()
        relayed.set_result(None)
        return relayed

    async def join(self, timeout_s: float) -> AdminState:
        return AdminState()

    async def listen(self, apply, held) -> None:
        await asyncio.Event().wait()


def test_a_reload_relayed_while_the_server_drains_leaves_no_host_open(tiny_config):
    closing = threading.Event()
    hosts = []

    def loader(path, hooks):
        if path == "fake-2":  # the relayed reload: it finishes while the drain is closing the host it took
            closing.wait(5)
        host = fake_host(tiny_config, hooks, name=path, engine=_ClosingEngine(close_s=0.3, on_close=closing.set))
        hosts.append(host)
        return host

    class RelayDuringTheDrain(_QuietRelay):
        async def listen(self, apply, held) -> None:
            while not server.ready:
                await asyncio.sleep(0.005)
            while server.ready:  # the drain begins
                await asyncio.sleep(0.005)
            await apply("reload", "fake-2")

    server = Server(serve_config(), loader, "fake-1", control=RelayDuringTheDrain())
    with ServerThread(server):
        pass
    assert hosts and all(h.batcher.engine.closed for h in hosts), [h.name for h in hosts]


def test_a_relayed_reload_still_loading_when_the_server_stops_has_both_hosts_closed(tiny_config, caplog):
    import logging

    loading = threading.Event()
    hosts = []

    def loader(path, hooks):
        if path == "fake-2":
            loading.set()
            time.sleep(0.5)  # still loading when the drain begins
        engine = _ClosingEngine(close_s=0.5 if path == "fake-1" else 0.0)  # the old host's close takes a while
        host = fake_host(tiny_config, hooks, name=path, engine=engine)
        hosts.append(host)
        return host

    class RelayedReload(_QuietRelay):  # as the control bus does: a relayed reload runs as a task of its own
        tasks: set = set()

        async def listen(self, apply, held) -> None:
            while not server.ready:
                await asyncio.sleep(0.005)
            self.tasks.add(asyncio.create_task(apply("reload", "fake-2")))
            await asyncio.Event().wait()

    server = Server(serve_config(), loader, "fake-1", control=RelayedReload())
    caplog.set_level(logging.INFO, logger="dualhrq.runtime")
    with ServerThread(server):
        assert loading.wait(5)
    said = [r.getMessage() for r in caplog.records if r.name in ("dualhrq.runtime.server", "dualhrq.runtime.hosting")]
    assert [h.name for h in hosts] == ["fake-1", "fake-2"] and all(h.batcher.engine.closed for h in hosts)
    assert "retired fake-1" in said and said.index("retired fake-1") < said.index("stopped"), said


def test_a_reload_that_ends_during_the_drain_has_its_old_host_closed_before_the_server_stops(tiny_config, caplog):
    import logging

    def loader(path, hooks):
        if path == "fake-2":
            time.sleep(0.15)
        engine = _ClosingEngine(close_s=0.5 if path == "fake-1" else 0.0, delay_s=0.4 if path == "fake-1" else 0.0)
        return fake_host(tiny_config, hooks, name=path, engine=engine, max_batch=1)

    server = Server(serve_config(inline_engine=False), loader, "fake-1")

    async def traffic(address):
        async with AsyncClient(address, timeout_s=10, retries=0) as c:
            slow = asyncio.create_task(c.request(signal_body()))  # holds fake-1 for 0.4 s
            await asyncio.sleep(0.05)
            reload = asyncio.create_task(c.admin("reload", token=TOKEN, bundle="fake-2"))
            await asyncio.sleep(0.05)
            server.stop()  # the reload ends during the drain: the old host's retirement starts then
            return await asyncio.gather(slow, reload)

    caplog.set_level(logging.INFO, logger="dualhrq.runtime")
    with ServerThread(server) as st:
        signal, reload = asyncio.run(traffic(st.address))
    assert isinstance(signal, p.SignalReply) and reload.ok
    said = [r.getMessage() for r in caplog.records if r.name in ("dualhrq.runtime.server", "dualhrq.runtime.hosting")]
    assert "retired fake-1" in said and said.index("retired fake-1") < said.index("stopped"), said


def _tracked(obj: object) -> bool:
    """Whether the cyclic collector would traverse ``obj`` in a full collection (frozen objects it skips)."""
    return any(o is obj for o in gc.get_objects())


def test_the_loaded_model_is_out_of_the_cyclic_collectors_reach_once_ready_and_after_a_reload(tiny_config):
    """A full collection traverses every tracked object: the model's would make it a pause in some reply."""
    with ServerThread(server_for(tiny_config)) as st, Client(st.address) as c:
        assert not _tracked(st.server._hosting.host.inputs)
        c.admin("reload", token=TOKEN, bundle="fake-2")
        assert st.server._hosting.host.name == "fake-2" and not _tracked(st.server._hosting.host.inputs)
