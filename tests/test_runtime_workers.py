"""`serve --workers 2` as a process: instrument affinity, admin relay, and a worker SIGKILLed under load
(every request still gets exactly one reply, a replacement serves within seconds). In one process: the admin
state a worker holds when it joins, and the control bus's refusal of messages it must not apply."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import yaml
import zmq
import zmq.asyncio
from runtime_fixtures import (  # noqa: F401
    ServerThread,
    fake_host,
    free_port,
    real_signal_body,
    runtime_cli,
    signal_body,
    tiny_bundle,
    until,
    wait_ready,
)

from dualhrq.compliance.gate import ComplianceGate
from dualhrq.compliance.journal import StateJournal
from dualhrq.config import ComplianceConfig, ServeConfig
from dualhrq.errors import ModelLoadError
from dualhrq.runtime import protocol as p
from dualhrq.runtime import workers
from dualhrq.runtime.backend import AdminState, BrokerAddresses, ControlSeal
from dualhrq.runtime.broker import Broker
from dualhrq.runtime.client import Client
from dualhrq.runtime.server import Server
from dualhrq.runtime.workers import ControlBus

TOKEN = "w-token"
OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 4, "admin_tokens": [TOKEN], "drain_timeout_s": 2.0}}
INSTRUMENTS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "NZDUSD", "USDCAD", "EURGBP"]
MARKET = {"ts": 1_700_000_000_000_000_000, "last": 1.1, "bid": 1.0999, "ask": 1.1001, "prior_close": 1.1,
          "luld_tier": 1}


def _stats_by_pid(address: str, rounds: int = 4) -> dict[int, dict]:
    """Requests without an instrument go round the live workers: a few rounds reach every one."""
    seen: dict[int, dict] = {}
    with Client(address, timeout_s=5, retries=0) as c:
        for _ in range(rounds):
            detail = c.admin("stats", token=TOKEN).detail
            seen[detail["pid"]] = detail
    return seen


def _signals(detail: dict) -> float:
    return detail["counters"].get("dualhrq_requests_total|code=ok|type=signal", 0)


def _pong_workers(address: str) -> int:
    with Client(address, timeout_s=2, retries=0) as c:
        return c.ping().workers


def _load(address: str, bodies: list[dict], in_flight: int, kill_after: int, victim: int) -> dict:
    """Closed loop over one DEALER; SIGKILL `victim` once `kill_after` requests are out. Pings on the side
    (every 50 ms, not counted) time when the broker, having announced one live worker, announces two again."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    replies: dict[str, list[dict]] = {}
    sent, killed_at, down, back_at, next_ping, pings = 0, None, False, None, 0.0, 0
    until = time.monotonic() + 120
    while sent < min(in_flight, len(bodies)):
        sock.send(msgpack.packb(bodies[sent]))
        sent += 1
    while (sum(map(len, replies.values())) < len(bodies) or (killed_at and not back_at)) \
            and time.monotonic() < until:
        now = time.monotonic()
        if killed_at and not back_at and now >= next_ping:
            pings += 1
            sock.send(msgpack.packb({"type": "ping", "id": f"ping-{pings}"}))
            next_ping = now + 0.05
        if not sock.poll(20):
            continue
        reply = msgpack.unpackb(sock.recv())
        if reply["id"].startswith("ping-"):
            down = down or reply.get("workers") == 1
            if down and reply.get("workers") == 2 and not back_at:
                back_at = time.monotonic()
            continue
        replies.setdefault(reply["id"], []).append(reply)
        if sent < len(bodies):
            sock.send(msgpack.packb(bodies[sent]))
            sent += 1
            if sent == kill_after:
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
    while sock.poll(300):  # nothing more may come: exactly one reply each
        reply = msgpack.unpackb(sock.recv())
        if not reply["id"].startswith("ping-"):
            replies.setdefault(reply["id"], []).append(reply)
    sock.close()
    ctx.term()
    return {"replies": replies, "replacement_s": back_at - killed_at if back_at and killed_at else None}


@pytest.mark.slow  # two real worker processes, one killed and replaced: ~40 s on this CPU
def test_two_workers_keep_affinity_relay_admin_and_lose_no_reply_when_one_is_killed(tiny_bundle, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(OVERLAY))
    address = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "server.log"  # a file, not a pipe: three processes' logs must never block on a full pipe
    proc = subprocess.Popen(runtime_cli("serve", "--bundle", str(tiny_bundle), "--config", str(config),
                                        "--bind", address, "--workers", "2"),
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        pong = wait_ready(address, proc=proc)
        needs = (pong.needs.coarse, pong.needs.fine)
        until = time.monotonic() + 120
        while _pong_workers(address) < 2:  # the second worker may still be warming up
            assert time.monotonic() < until
            time.sleep(0.2)

        # Affinity: every request of an instrument is answered by one worker.
        owner: dict[str, int] = {}
        with Client(address, timeout_s=10, retries=0) as c:
            for sym in INSTRUMENTS:
                before = {pid: _signals(d) for pid, d in _stats_by_pid(address).items()}
                for i in range(6):
                    assert isinstance(c.request(real_signal_body(f"{sym}-{i}", needs, instrument=sym)),
                                      p.SignalReply)
                grew = {pid: _signals(d) - before[pid] for pid, d in _stats_by_pid(address).items()}
                assert sorted(grew.values()) == [0, 6], (sym, grew)
                owner[sym] = max(grew, key=grew.get)
            # Admin state reaches the worker that did not take the admin request, through the control bus.
            assert c.admin("kill_switch_on", token=TOKEN).ok
            assert all(d["kill_switch"] for d in _stats_by_pid(address).values())
            assert c.admin("kill_switch_off", token=TOKEN).ok
        assert {d["workers"] for d in _stats_by_pid(address).values()} == {2}

        # 400 requests, 16 in flight, a quarter carrying `market`; the owner of EURUSD is SIGKILLed after 150.
        bodies = [real_signal_body(f"r{i}", needs, instrument=INSTRUMENTS[i % len(INSTRUMENTS)],
                                   **({"market": MARKET} if i % 4 == 0 else {})) for i in range(400)]
        victim = owner["EURUSD"]
        result = _load(address, bodies, in_flight=16, kill_after=150, victim=victim)
        replies = result["replies"]
        lost = [b["id"] for b in bodies if b["id"] not in replies]
        doubled = [rid for rid, rs in replies.items() if len(rs) > 1]
        errors = [rs[0] for rs in replies.values() if rs[0]["type"] == "error"]
        print(f"\nlost {len(lost)}, doubled {len(doubled)}, lost-worker errors {len(errors)}, "
              f"replacement announced after {result['replacement_s']} s")
        assert not lost and not doubled
        # Only requests that may have reached the dead worker's gate are answered as lost; the rest were re-sent.
        assert all(e["code"] == "internal" and "lost" in e["message"] for e in errors), errors
        assert all(bodies[int(e["id"][1:])].get("market") for e in errors)
        assert result["replacement_s"] is not None and result["replacement_s"] < 5.0

        # The replacement took its slot back (EURUSD with it) and serves; every request after is answered.
        stats = _stats_by_pid(address)
        assert victim not in stats and len(stats) == 2
        with Client(address, timeout_s=10, retries=0) as c:
            for sym in INSTRUMENTS:
                assert isinstance(c.request(real_signal_body(f"{sym}-after", needs, instrument=sym)), p.SignalReply)
        fresh = {pid: _signals(d) for pid, d in _stats_by_pid(address).items()}
        assert all(n > 0 for n in fresh.values()), fresh

        # A worker restarted while the kill switch is on holds it from its first reply: the broker hands it over.
        with Client(address, timeout_s=10, retries=0) as c:
            assert c.admin("kill_switch_on", token=TOKEN).ok
        (replacement,) = set(fresh) - set(owner.values())
        os.kill(replacement, signal.SIGKILL)
        until = time.monotonic() + 120
        while set(_stats_by_pid(address)) & {replacement} or len(_stats_by_pid(address)) < 2:
            assert time.monotonic() < until, "no second replacement in time"
            time.sleep(0.2)
        with Client(address, timeout_s=10, retries=0) as c:
            held = [c.request(real_signal_body(f"{sym}-held", needs, instrument=sym)) for sym in INSTRUMENTS]
        assert all((r.action, r.compliance.reasons) == ("HOLD", ["kill_switch"]) for r in held), held
        assert all(d["kill_switch"] for d in _stats_by_pid(address).values())
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = log.read_text(errors="replace")
    assert code == 0, output
    assert "restarting it" in output


# ---------------------------------------------------------------- admin state, in one process




class Workers:
    """The real broker and real worker Servers (fake hosts named after their bundle path) on the control bus,
    each with its own fresh ComplianceGate (on the compliance store `state_path` when given); `loaded[slot]` lists
    the bundles each slot's latest worker loaded."""

    def __init__(self, tiny_config, slots: str = "ab", state_path: Path | None = None) -> None:
        self.tiny_config = tiny_config
        self.compliance = ComplianceConfig(state_path=None if state_path is None else str(state_path))
        self.broken: set[str] = set()  # bundles whose load fails
        self.broken_in: dict[str, set[str]] = {}  # slot -> bundles whose load fails in that slot alone
        self.failed: list[str] = []  # the loads that failed, in order
        self.addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
        self.broker = Broker(self.addresses, timeout_s=1.0).start()
        self.loaded: dict[str, list[str]] = {}
        self.workers = {slot: self.start(slot) for slot in slots}
        until(lambda: self.broker.live == len(slots), 20.0)

    def start(self, slot: str, wait: bool = True, gate: ComplianceGate | None = None) -> tuple[ServerThread, ControlBus]:
        self.loaded[slot] = loaded = []

        def loader(path, hooks):
            if path in self.broken or path in self.broken_in.get(slot, ()):
                self.failed.append(path)
                raise ModelLoadError(f"{path}: scripted to fail")
            loaded.append(path)
            return fake_host(self.tiny_config, hooks, name=path)

        bus = ControlBus(self.addresses.control_in, self.addresses.control_out, self.broker.control_key)
        server = Server(ServeConfig(drain_timeout_s=0.5, admin_tokens=[TOKEN]), loader, "fake-1",
                        gate=gate or ComplianceGate(self.compliance), connect=self.addresses.backend, control=bus,
                        slot=slot)
        return (ServerThread(server).__enter__() if wait else ServerThread(server).start()), bus

    def stop(self, slot: str) -> None:
        thread, bus = self.workers.pop(slot)
        thread.__exit__(None, None, None)
        bus.close()

    def stats(self, slot: str) -> dict:
        return self.workers[slot][0].server.stats()

    def close(self) -> None:
        for slot in list(self.workers):
            self.stop(slot)
        self.broker.stop()
        shutil.rmtree(Path(self.addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)


def test_a_worker_restarted_while_the_kill_switch_is_on_holds_it_and_the_other_admin_state_from_its_first_reply(
        tiny_config):
    cluster = Workers(tiny_config)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            for cmd, bundle in (("kill_switch_on", ""), ("disable_patterns", ""), ("reload", "fake-2")):
                assert c.admin(cmd, token=TOKEN, bundle=bundle).ok, cmd
            until(lambda: all(cluster.stats(s)["model"] == "fake-2" and cluster.stats(s)["kill_switch"]
                               for s in "ab"), 20.0)
            # The worker of slot a goes; its replacement starts with a fresh gate, as a restarted process does.
            cluster.stop("a")
            until(lambda: cluster.broker.live == 1, 20.0)
            cluster.workers["a"] = cluster.start("a")
            until(lambda: cluster.broker.live == 2, 20.0)
            fresh = cluster.stats("a")
            assert (fresh["kill_switch"], fresh["patterns_enabled"], fresh["model"]) == (True, False, "fake-2")
            assert cluster.loaded["a"] == ["fake-2"]  # the reloaded bundle, loaded once: not the original first
            replies = [c.request(signal_body(f"s{i}", instrument=f"SYM{i}")) for i in range(12)]
        assert all((r.action, r.compliance.reasons, r.model) == ("HOLD", ["kill_switch"], "fake-2") for r in replies)
        answered = cluster.stats("a")["counters"].get("dualhrq_requests_total|code=ok|type=signal", 0)
        assert answered > 0  # the new worker answered some of them, every one HOLD
    finally:
        cluster.close()


def test_a_worker_that_cannot_load_the_handed_over_bundle_waits_off_the_broker_instead_of_crashing(tiny_config):
    """A reloaded bundle broken since: the restarted worker does not exit (a crash loop would end the server),
    takes no requests meanwhile (its siblings serve every instrument), and joins once a reload loads."""
    cluster = Workers(tiny_config)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("reload", token=TOKEN, bundle="fake-2").ok
            until(lambda: all(cluster.stats(s)["model"] == "fake-2" for s in "ab"), 20.0)
            cluster.broken.add("fake-2")
            cluster.stop("a")
            until(lambda: cluster.broker.live == 1, 20.0)
            cluster.workers["a"] = cluster.start("a", wait=False)
            until(lambda: cluster.failed == ["fake-2", "fake-2"], 20.0)  # tried, and tried again
            thread = cluster.workers["a"][0]
            assert thread.alive and not thread.server.ready and cluster.broker.live == 1
            replies = [c.request(signal_body(f"s{i}", instrument=f"SYM{i}")) for i in range(8)]
            assert {r.model for r in replies} == {"fake-2"}
            # The sibling reloads fake-3, which fails here too: the retries go on with it, the cluster's latest,
            # not with fake-2 (broken for good), or the worker would never join.
            cluster.broken_in["a"] = {"fake-3"}
            assert c.admin("reload", token=TOKEN, bundle="fake-3").ok
            until(lambda: cluster.failed[-1] == "fake-3", 20.0)
            cluster.broken_in.clear()
            until(lambda: cluster.broker.live == 2, 20.0)
            assert cluster.stats("a")["model"] == "fake-3" and cluster.loaded["a"] == ["fake-3"]
    finally:
        cluster.close()


def test_after_a_reload_of_the_same_path_a_worker_whose_bundle_broke_since_waits_instead_of_crashing(tiny_config):
    """A reload that names no bundle reloads the path each worker holds (a replaced symlink): if what it points
    to breaks later, a restarted worker must wait too, though the path is the one it was started with."""
    cluster = Workers(tiny_config)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("reload", token=TOKEN).ok
        cluster.broken.add("fake-1")
        cluster.stop("a")
        until(lambda: cluster.broker.live == 1, 20.0)
        cluster.workers["a"] = cluster.start("a", wait=False)
        until(lambda: len(cluster.failed) >= 2, 20.0)
        assert cluster.workers["a"][0].alive and cluster.broker.live == 1
        cluster.broken.clear()
        until(lambda: cluster.broker.live == 2, 20.0)
    finally:
        cluster.close()


def test_a_worker_restarted_after_the_kill_switch_was_switched_off_is_off_though_its_store_read_on(tiny_config,
                                                                                                  tmp_path):
    """Its gate opened the store while the switch was on; `kill_switch_off` came before it joined. The broker,
    which relayed that command, decides: off, and the store stays off."""
    store = tmp_path / "compliance.sqlite"
    cluster = Workers(tiny_config, state_path=store)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("kill_switch_on", token=TOKEN).ok
            until(lambda: all(cluster.stats(s)["kill_switch"] for s in "ab"), 20.0)
            cluster.stop("a")
            until(lambda: cluster.broker.live == 1, 20.0)
            early = ComplianceGate(cluster.compliance)
            assert early.kill_switch
            assert c.admin("kill_switch_off", token=TOKEN).ok
            cluster.workers["a"] = cluster.start("a", gate=early)
            until(lambda: cluster.broker.live == 2, 20.0)
            assert not cluster.stats("a")["kill_switch"] and not StateJournal(store).kill_switch()
    finally:
        cluster.close()


def test_a_patterns_switch_does_not_write_a_workers_kill_switch_over_the_stores(tiny_config, tmp_path):
    """The store says off (set by a process this worker did not hear from); this worker still holds on. Its
    `disable_patterns` must leave the store as it is: only a kill switch command writes it."""
    store = tmp_path / "compliance.sqlite"
    cluster = Workers(tiny_config, slots="a", state_path=store)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("kill_switch_on", token=TOKEN).ok
            StateJournal(store).set_kill_switch(False)
            assert c.admin("disable_patterns", token=TOKEN).ok
            assert not StateJournal(store).kill_switch()
            assert cluster.stats("a")["kill_switch"]  # this worker keeps what it was told
    finally:
        cluster.close()


def test_a_restarted_server_holds_the_kill_switch_its_compliance_store_holds_until_it_is_switched_off(
        tiny_config, tmp_path):
    """Broker and workers all restarted (the broker's own state starts off): the store written through by the
    workers keeps the switch on from the first reply; switched off, the next restart starts off."""
    store = tmp_path / "compliance.sqlite"

    def holds(cluster: Workers) -> list[bool]:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            replies = [c.request(signal_body(f"s{i}", instrument=f"SYM{i}")) for i in range(6)]
        return [r.compliance.reasons == ["kill_switch"] for r in replies]

    cluster = Workers(tiny_config, state_path=store)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("kill_switch_on", token=TOKEN).ok
        until(lambda: all(cluster.stats(s)["kill_switch"] for s in "ab"), 20.0)
    finally:
        cluster.close()
    cluster = Workers(tiny_config, state_path=store)
    try:
        assert all(cluster.stats(s)["kill_switch"] for s in "ab")
        assert all(holds(cluster))
        # and the workers relayed it: the broker hands it over to a worker that has no store of its own
        bare = Server(ServeConfig(drain_timeout_s=0.5, admin_tokens=[TOKEN]),
                      lambda path, hooks: fake_host(tiny_config, hooks, name=path), "fake-1", gate=ComplianceGate(),
                      connect=cluster.addresses.backend,
                      control=ControlBus(cluster.addresses.control_in, cluster.addresses.control_out,
                                         cluster.broker.control_key), slot="c")
        with ServerThread(bare):
            assert bare.stats()["kill_switch"]
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            assert c.admin("kill_switch_off", token=TOKEN).ok
        until(lambda: not any(cluster.stats(s)["kill_switch"] for s in "ab"), 20.0)
    finally:
        cluster.close()
    cluster = Workers(tiny_config, state_path=store)
    try:
        assert not any(holds(cluster))
    finally:
        cluster.close()


async def _recv_until(sock: zmq.asyncio.Socket, want: bytes) -> None:
    while await sock.recv() != want:
        pass


def test_the_control_bus_skips_forged_malformed_stale_and_replayed_messages_and_keeps_applying(tmp_path, caplog):
    key = b"k" * 32
    bus = ControlBus(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out", key)
    broker, sibling, forger = ControlSeal(key, "broker"), ControlSeal(key, "sibling"), ControlSeal(b"x" * 32, "x")
    applied: list[tuple[str, str]] = []

    async def apply(cmd: str, bundle: str, echo) -> None:
        applied.append((cmd, bundle))
        if cmd == "reload":
            raise RuntimeError("bundle does not load")  # a relay that fails must not end the listener either

    async def main() -> tuple[AdminState | None, bool]:
        ctx = zmq.asyncio.Context()
        out = ctx.socket(zmq.XPUB)  # stands in for the broker's side of the bus
        out.setsockopt(zmq.LINGER, 0)
        out.bind(f"ipc://{tmp_path}/out")
        joining = asyncio.create_task(bus.join(5.0))
        await _recv_until(out, b"\x01state/" + bus.origin.encode())
        await out.send_multipart([b"relay", b"not three frames"])  # refused while joining too
        await out.send_multipart(broker.handover(bus.origin.encode(), AdminState(kill_switch=True)))
        state = await joining
        listening = asyncio.create_task(bus.listen(apply, AdminState))
        unknown = sibling.relay("stats")  # sealed, but not a command that changes state
        failing = sibling.relay("reload", "/elsewhere")
        valid = sibling.relay("disable_patterns")
        tampered = [valid[0], valid[1].replace(b"disable", b"enable_"), valid[2]]
        with pytest.MonkeyPatch.context() as m:
            m.setattr(time, "time", lambda: 1_000_000.0)
            stale = sibling.relay("kill_switch_off")
        garbage = [b"relay \xc1 garbage"]  # on a topic the bus subscribes to, or it would never arrive
        for frames in (garbage, forger.relay("kill_switch_off"), tampered, unknown, failing, stale, valid,
                       valid):  # the second `valid`: a replay
            await out.send_multipart(frames)
        await out.send_multipart(sibling.relay("enable_patterns"))
        for _ in range(200):
            if ("enable_patterns", "") in applied:
                break
            await asyncio.sleep(0.01)
        alive = not listening.done()
        listening.cancel()
        out.close()
        ctx.term()
        return state, alive

    try:
        state, alive = asyncio.run(main())
    finally:
        bus.close()
    assert state == AdminState(kill_switch=True)
    # A reload runs beside the switches (it may take seconds): only the switches keep their order.
    assert alive and sorted(applied) == [("disable_patterns", ""), ("enable_patterns", ""), ("reload", "/elsewhere")]
    assert [c for c, _ in applied if c != "reload"] == ["disable_patterns", "enable_patterns"]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 7 and "stale" in refused[-2] and "replayed" in refused[-1], refused


KEY = b"k" * 32


@contextlib.asynccontextmanager
async def _joined(bus: ControlBus, tmp_path: Path) -> AsyncIterator[tuple[zmq.asyncio.Context, zmq.asyncio.Socket]]:
    """Stands in for the broker's side of `bus` (made with KEY on tmp_path's endpoints): its XPUB, out to the
    worker, once the bus has joined with the default state. Yields (its context, that socket)."""
    ctx = zmq.asyncio.Context()
    out = ctx.socket(zmq.XPUB)
    out.setsockopt(zmq.LINGER, 0)
    out.bind(f"ipc://{tmp_path}/out")
    try:
        joining = asyncio.create_task(bus.join(5.0))
        await _recv_until(out, b"\x01state/" + bus.origin.encode())
        await out.send_multipart(ControlSeal(KEY, "broker").handover(bus.origin.encode(), AdminState()))
        await joining
        yield ctx, out
    finally:
        out.close()
        ctx.term()


def _taken(ctx: zmq.asyncio.Context, tmp_path: Path) -> zmq.asyncio.Socket:
    """The broker's side in from the workers, on tmp_path's endpoint: what the bus publishes arrives here."""
    taken = ctx.socket(zmq.SUB)
    taken.setsockopt(zmq.LINGER, 0)
    taken.setsockopt(zmq.SUBSCRIBE, b"")
    taken.bind(f"ipc://{tmp_path}/in")
    return taken


async def _eventually(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def _on_bus(tmp_path: Path, main: Callable[[ControlBus], Awaitable[Any]]) -> Any:
    bus = ControlBus(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out", KEY)
    try:
        return asyncio.run(main(bus))
    finally:
        bus.close()


def test_a_kill_switch_relayed_behind_a_slow_reload_is_applied_at_once_not_after_the_load(tmp_path):
    sibling = ControlSeal(KEY, "sibling")
    applied: dict[str, float] = {}

    async def apply(cmd: str, bundle: str, echo) -> None:
        if cmd == "reload":
            await asyncio.sleep(2.0)  # a bundle that takes seconds to load and warm
        applied[cmd] = time.monotonic()

    async def main(bus: ControlBus) -> float:
        async with _joined(bus, tmp_path) as (_, out):
            listening = asyncio.create_task(bus.listen(apply, AdminState))
            sent = time.monotonic()
            await out.send_multipart(sibling.relay("reload", "/slow"))
            await out.send_multipart(sibling.relay("kill_switch_on"))
            await _eventually(lambda: "kill_switch_on" in applied)
            listening.cancel()
        return applied.get("kill_switch_on", float("inf")) - sent

    waited = _on_bus(tmp_path, main)
    assert waited < 1.0 and "reload" not in applied  # the switch held while the load was still under way


def test_a_relayed_reload_under_way_when_the_listener_stops_runs_to_its_end(tmp_path):
    sibling = ControlSeal(KEY, "sibling")
    events: list[str] = []

    async def apply(cmd: str, bundle: str, echo) -> None:
        events.append("loading")
        await asyncio.sleep(0.3)  # a thread loading a bundle: abandoned, the host it returns would stay open
        events.append("loaded")

    async def main(bus: ControlBus) -> None:
        async with _joined(bus, tmp_path) as (_, out):
            listening = asyncio.create_task(bus.listen(apply, AdminState))
            await out.send_multipart(sibling.relay("reload", "/slow"))
            await _eventually(lambda: bool(events))
            listening.cancel()  # the server stops: its drain begins
            await asyncio.sleep(0.6)

    _on_bus(tmp_path, main)
    assert events == ["loading", "loaded"]


def test_conflicting_commands_taken_by_two_workers_end_as_the_broker_ordered_them(tmp_path):
    sibling = ControlSeal(KEY, "sibling")
    applied: list[tuple[str, str, bool]] = []

    async def apply(cmd: str, bundle: str, echo) -> None:  # as the server does: an echo only while still current
        if echo is None or echo():
            applied.append((cmd, bundle, echo is not None))

    async def main(bus: ControlBus) -> None:
        async with _joined(bus, tmp_path) as (ctx, out):
            taken = _taken(ctx, tmp_path)
            try:
                listening = asyncio.create_task(bus.listen(apply, AdminState))
                while True:  # what the bus's PUB sends before its connection is up is dropped: wait for it
                    bus.publish("enable_patterns")
                    if await taken.poll(100):
                        break
                while await taken.poll(100):
                    await taken.recv_multipart()

                acks: list[asyncio.Future] = []

                async def published(cmd: str, bundle: str = "") -> list[bytes]:
                    acks.append(bus.publish(cmd, bundle))
                    return await taken.recv_multipart()

                # This worker took kill_switch_off while a sibling took kill_switch_on; the broker passed the
                # sibling's on first, then this worker's off: every worker must end off, as the broker's state does.
                own_off = await published("kill_switch_off")
                # Then this worker took disable_patterns and enable_patterns in quick succession, and a reload;
                # the sibling's reload came between this worker's reload and its echo.
                own_disable = await published("disable_patterns")
                own_enable = await published("enable_patterns")
                own_reload = await published("reload", "/mine")
                for frames in (sibling.relay("kill_switch_on"), own_off, own_disable, own_enable,
                               sibling.relay("reload", "/theirs"), own_reload):
                    await out.send_multipart(frames)
                await _eventually(lambda: ("reload", "/mine", True) in applied)
                assert all(ack.done() for ack in acks)  # each came back: the broker passed each on
                listening.cancel()
            finally:
                taken.close()

    _on_bus(tmp_path, main)
    # The sibling's on, then this worker's own off again: off, as the broker ordered. The echo of
    # disable_patterns is skipped (re-applying it would switch the patterns off until the next echo came),
    # enable_patterns is re-applied; this worker's reload comes back after the sibling's and is applied after it.
    assert applied == [("kill_switch_on", "", False), ("kill_switch_off", "", True), ("enable_patterns", "", True),
                       ("reload", "/theirs", False), ("reload", "/mine", True)]


@contextlib.contextmanager
def _publishing_to_a_broker() -> Iterator[tuple[Broker, zmq.Socket, Callable[[], AdminState | None]]]:
    """A started broker; an XPUB into its control bus, which hears the broker's subscription, so nothing sent on it
    is lost; and the state a worker joining the broker now is handed."""
    addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
    broker = Broker(addresses).start()

    async def join() -> AdminState | None:
        bus = ControlBus(addresses.control_in, addresses.control_out, broker.control_key)
        try:
            return await bus.join(5.0)
        finally:
            bus.close()

    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(addresses.control_in)
    try:
        assert pub.poll(5000) and pub.recv() == b"\x01"
        yield broker, pub, lambda: asyncio.run(join())
    finally:
        pub.close()
        broker.stop()
        shutil.rmtree(Path(addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)


def test_the_broker_hands_over_only_what_sealed_relays_set():
    with _publishing_to_a_broker() as (broker, pub, joined):
        sibling, forger = ControlSeal(broker.control_key, "sibling"), ControlSeal(b"x" * 32, "forger")
        pub.send_multipart(forger.relay("kill_switch_on"))
        pub.send_multipart(sibling.relay("disable_patterns"))
        pub.send_multipart(sibling.relay("reload", "fake-9"))
        # Joined until the broker has folded the relays in: the forged kill switch, had it counted, would stay on.
        until(lambda: joined() == AdminState(kill_switch=False, patterns_enabled=False, bundle="fake-9",
                                             kill_switch_set=False, patterns_set=True, reloaded=True))


def test_a_rejoined_brokers_hand_over_is_applied_where_commanded_since_it_started_and_taught_where_default():
    held = AdminState(kill_switch=True, patterns_enabled=False, bundle="b-2", reloaded=True)
    # A restarted broker holds the defaults, nothing set since it started: the worker teaches what it holds.
    assert AdminState().differences(held) == [("kill_switch_on", "", True), ("disable_patterns", "", True),
                                              ("reload", "b-2", True)]
    # The same broker after a break in which commands passed through it: the worker applies them.
    commanded = AdminState(kill_switch_set=True, patterns_set=True, bundle="b-3", reloaded=True)
    assert commanded.differences(held) == [("kill_switch_off", "", False), ("enable_patterns", "", False),
                                           ("reload", "b-3", False)]
    assert msgspec.structs.replace(held, kill_switch_set=True, patterns_set=True).differences(held) == []
    assert AdminState().differences(AdminState(bundle="b-1")) == []  # its own bundle, the defaults: nothing


def test_a_later_hand_over_applies_what_the_broker_was_commanded_and_teaches_it_the_rest(tmp_path):
    applied: list[tuple[str, str, bool]] = []
    held = AdminState(kill_switch=True, patterns_enabled=False)  # what this worker holds

    async def apply(cmd: str, bundle: str, echo) -> None:
        applied.append((cmd, bundle, echo is not None))

    async def main(bus: ControlBus) -> list:
        async with _joined(bus, tmp_path) as (ctx, out):
            taken = _taken(ctx, tmp_path)
            try:
                listening = asyncio.create_task(bus.listen(apply, lambda: held))
                # The broker again: the patterns were switched on through it meanwhile, its kill switch is its
                # default. The taught value is sent again until it comes through (the PUB may not be up yet).
                await out.send_multipart(ControlSeal(KEY, "broker-again").handover(
                    bus.origin.encode(), AdminState(patterns_enabled=True, patterns_set=True)))
                assert await taken.poll(5000)
                relayed = ControlSeal(KEY, "reader").open(await taken.recv_multipart())
                await _eventually(lambda: bool(applied))
                listening.cancel()
            finally:
                taken.close()
        return [relayed]

    [relayed] = _on_bus(tmp_path, main)
    assert (relayed.cmd, relayed.taught) == ("kill_switch_on", True)
    assert applied == [("enable_patterns", "", False)]


def test_the_broker_passes_a_taught_value_on_only_until_a_command_of_its_setting_came():
    with _publishing_to_a_broker() as (broker, pub, joined):
        worker = ControlSeal(broker.control_key, "worker")
        pub.send_multipart(worker.relay("disable_patterns", taught=True))  # nothing set it yet: taken
        pub.send_multipart(worker.relay("kill_switch_off"))  # the operator's
        pub.send_multipart(worker.relay("kill_switch_on", taught=True))  # a late teacher: refused
        pub.send_multipart(worker.relay("reload", "fake-9"))  # the last: once it is in, so are those before
        until(lambda: joined() == AdminState(kill_switch=False, patterns_enabled=False, bundle="fake-9",
                                             kill_switch_set=True, patterns_set=True, reloaded=True))


def test_a_restarted_broker_is_taught_what_its_workers_hold_and_hands_it_to_a_worker_that_joins_it(tiny_config):
    cluster = Workers(tiny_config)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            for cmd, bundle in (("kill_switch_on", ""), ("disable_patterns", ""), ("reload", "fake-2")):
                assert c.admin(cmd, token=TOKEN, bundle=bundle).ok, cmd
        held = (True, False, "fake-2")

        def holds(slot: str) -> bool:
            s = cluster.stats(slot)
            return (s["kill_switch"], s["patterns_enabled"], s["model"]) == held

        until(lambda: holds("a") and holds("b"), 20.0)
        key = cluster.broker.control_key
        cluster.broker.stop()
        cluster.broker = Broker(cluster.addresses, timeout_s=1.0, control_key=key).start()  # its defaults
        until(lambda: cluster.broker.live == 2, 20.0)
        cluster.workers["c"] = cluster.start("c")  # a worker that joins it: a fresh gate, the original bundle
        until(lambda: cluster.broker.live == 3 and holds("c"), 20.0)
        # The two teachers each held fake-2: the one whose value the broker took is not reloaded by the other's
        # (a reload would only load it again, and drop its sessions' windows).
        assert cluster.loaded["a"] == cluster.loaded["b"] == ["fake-1", "fake-2"]
        assert cluster.loaded["c"][-1] == "fake-2"
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            replies = [c.request(signal_body(f"s{i}", instrument=f"SYM{i}")) for i in range(12)]
        assert all((r.action, r.model) == ("HOLD", "fake-2") for r in replies)
    finally:
        cluster.close()


def test_a_hand_over_does_not_undo_a_command_of_this_workers_still_on_its_way_nor_apply_what_it_holds(tmp_path):
    applied: list[tuple[str, str, bool]] = []
    held = AdminState(kill_switch=True, bundle="b-2", reloaded=True)
    sibling = ControlSeal(KEY, "sibling")

    async def apply(cmd: str, bundle: str, echo) -> None:
        applied.append((cmd, bundle, echo is not None))

    async def main(bus: ControlBus) -> None:
        async with _joined(bus, tmp_path) as (_, out):
            listening = asyncio.create_task(bus.listen(apply, lambda: held))
            bus.publish("kill_switch_on")  # this worker's own: the broker has not passed it back yet
            # The broker after a break: its kill switch was switched off through it before this worker's on.
            await out.send_multipart(ControlSeal(KEY, "broker-again").handover(
                bus.origin.encode(), AdminState(kill_switch_set=True, bundle="b-2", reloaded=True)))
            await out.send_multipart(sibling.relay("reload", "b-2", taught=True))  # what this worker holds
            await out.send_multipart(sibling.relay("disable_patterns", taught=True))  # what it does not
            await _eventually(lambda: bool(applied))
            await asyncio.sleep(0.1)
            listening.cancel()

    _on_bus(tmp_path, main)
    assert applied == [("disable_patterns", "", False)]


def test_a_server_loading_a_reload_holds_the_bundle_it_loads(tiny_config):
    """What it would teach a broker that rejoins meanwhile: the bundle it is loading, not the one it replaces."""
    release, loading = threading.Event(), threading.Event()

    def loader(path, hooks):
        if path == "fake-3":
            loading.set()
            release.wait(10)
        return fake_host(tiny_config, hooks, name=path)

    server = Server(ServeConfig(drain_timeout_s=0.5, admin_tokens=[TOKEN]), loader, "fake-1")
    with ServerThread(server) as thread:
        reloading = asyncio.run_coroutine_threadsafe(server._hosting.reload("fake-3"), thread.loop)
        assert loading.wait(10)
        held = server._admin.held()
        release.set()
        reloading.result(10)
    assert (held.bundle, held.reloaded) == ("fake-3", True)
    assert (server._admin.held().bundle, server._admin.held().reloaded) == ("fake-3", True)


def test_a_command_of_this_workers_the_broker_never_passed_back_gives_way_to_the_brokers_value_on_a_hand_over(
        tmp_path, monkeypatch):
    """Its reply said `relayed: false`; held back for an echo that never comes, the worker would differ from its
    siblings until the next command of that setting."""
    applied: list[tuple[str, str, bool]] = []

    async def apply(cmd: str, bundle: str, echo) -> None:
        applied.append((cmd, bundle, echo is not None))

    async def main(bus: ControlBus) -> None:
        async with _joined(bus, tmp_path) as (_, out):
            listening = asyncio.create_task(bus.listen(apply, lambda: AdminState(kill_switch=True)))
            bus.publish("kill_switch_on")  # lost: the broker never passes it back
            monkeypatch.setattr(workers, "ECHO_LOST_S", 0.0)  # as if that was long ago
            await out.send_multipart(ControlSeal(KEY, "broker-again").handover(
                bus.origin.encode(), AdminState(kill_switch_set=True)))
            await _eventually(lambda: bool(applied))
            listening.cancel()

    _on_bus(tmp_path, main)
    assert applied == [("kill_switch_off", "", False)]
