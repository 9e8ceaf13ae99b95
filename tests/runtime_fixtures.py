"""Shared pieces for the runtime tests (no tests here): a scripted engine, bars, free ports, bundles, a served bundle."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import msgpack
import numpy as np
import pytest
import zmq

from dualhrq.export.engines import Engine
from dualhrq.model.vocab import ACTIONS


class CountingEngine(Engine):
    """A segment that counts: z_H_out = z_H + 1, and a row asks to halt once its count reaches the
    row's regime_features[:, 0]. Lets a test script how many segments each row wants and see the carry fed
    back. The heads echo the count so a test can tell which segment a row's outputs came from."""

    def __init__(self, max_batch: int = 8, delay_s: float = 0.0, n_regimes: int = 3,
                 gate: "threading.Event | None" = None) -> None:
        self.name, self.max_batch = "counting", max_batch
        self.delay_s, self.n_regimes = delay_s, n_regimes
        self.gate = gate  # when given, every call waits for it: a test holds requests in flight for as long as it needs
        self.calls: list[int] = []  # batch size of every call

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        b = len(feeds["h_tokens"])
        self.calls.append(b)
        z_h = feeds["z_H"] + 1
        count = z_h[:, 0, 0]
        want = feeds["regime_features"][:, 0]
        halt = count >= want
        q = np.stack([np.where(halt, 1.0, -1.0), np.where(halt, -1.0, 1.0)], axis=1).astype(np.float32)
        logits = np.zeros((b, 5), np.float32)
        logits[:, 0] = feeds["instrument_id"]  # BUY's logit carries the instrument id: rows stay distinct
        regime = np.full((b, self.n_regimes), 1.0 / self.n_regimes, np.float32)
        return {"policy_logits": logits, "quantity": count.astype(np.float32), "value": count.astype(np.float32),
                "q_logits": q, "forecast_coarse": count.astype(np.float32),
                "forecast_fine": feeds["pattern_mask"].sum(1).astype(np.float32), "regime_probs": regime,
                "z_H_out": z_h, "z_L_out": feeds["z_L"] + 1}


def row_inputs(b: int = 1, want_segments: float = 1.0, instrument: int = 0, t_h: int = 4, t_l: int = 6,
               f: int = 3, k: int = 2, p: int = 2) -> dict[str, np.ndarray]:
    """Non-carry graph inputs for b rows of a small graph."""
    regime = np.zeros((b, 20), np.float32)
    regime[:, 0] = want_segments
    return {"h_tokens": np.zeros((b, t_h, f), np.float32), "l_tokens": np.zeros((b, t_l, f), np.float32),
            "instrument_id": np.full(b, instrument, np.int64), "timeframe_id": np.zeros(b, np.int64),
            "regime_features": regime, "pattern_context": np.zeros((b, k, p), np.float32),
            "pattern_mask": np.zeros((b, k), np.float32)}


def zero_carry(b: int, t_h: int = 4, t_l: int = 6, d: int = 2) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((b, t_h, d), np.float32), np.zeros((b, t_l, d), np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- a host and a server for the server tests


class _FakeStream:
    """StreamWindow stand-in: an append's fine bars become the window's newest; its sample is FakeInputs'."""

    no_coarse = None

    def __init__(self, inputs, bars):
        self.inputs, self.bars = inputs, bars

    def extend(self, coarse, fine):
        from types import SimpleNamespace

        self.bars = SimpleNamespace(coarse=self.bars.coarse, fine=fine, as_of=int(fine.t[-1]))
        return self.bars

    def sample(self):
        s = self.inputs.sample(self.bars)
        s.pattern_features = np.zeros(5)
        return s


class FakeInputs:
    """InputPipeline stand-in (its per-request steps): shapes the CountingEngine accepts; every row halts
    after 1 segment; the retrieval key is the last five log closes, as_of the last fine bar; the decision is
    the policy's argmax."""

    pattern_shape = (2, 8)
    timeframe, coarse_rule = "1h", "1d"
    rule = None  # the decision is the argmax

    def __init__(self, needs):
        self.needs = needs

    def window(self, coarse, fine, *, validated=False):
        from types import SimpleNamespace

        return SimpleNamespace(coarse=coarse, fine=fine, as_of=int(fine.t[-1]))

    def key(self, bars):
        return np.log(bars.fine.c[-5:])[None]

    def sample(self, bars, key=None):
        from types import SimpleNamespace

        regime = np.zeros(20, np.float32)
        regime[0] = 1.0
        return SimpleNamespace(h_tokens=np.zeros((4, 3), np.float32), l_tokens=np.zeros((6, 3), np.float32),
                               regime_features=regime, as_of=bars.as_of, state=0)

    def graph_inputs(self, sample, instrument, timeframe):
        return {"h_tokens": sample.h_tokens[None], "l_tokens": sample.l_tokens[None],
                "instrument_id": np.array([len(instrument)], np.int64), "timeframe_id": np.array([1], np.int64),
                "regime_features": sample.regime_features[None]}

    def regime_only(self, n=1):
        return np.zeros((n, 2, 8), np.float32), np.zeros((n, 2), np.float32)

    def stream(self, bars, sample, closure_bars):
        return _FakeStream(self, bars)

    def decide(self, heads, state):
        from dualhrq.model.decision import Decision, softmax

        probs = softmax(heads["policy_logits"])
        regime = np.asarray(heads["regime_probs"], np.float64)
        best = int(probs.argmax())
        return Decision(ACTIONS[best], float(heads["quantity"]), probs.tolist(), float(probs[best]),
                        float(heads["forecast_coarse"]), float(heads["forecast_fine"]), float(heads["value"]),
                        int(regime.argmax()), regime.tolist())


def fake_host(config, hooks=None, *, engine=None, retriever=None, patterns=None, name="fake-1", needs=(5, 10),
              **batcher_kw):
    """A ModelHost around the CountingEngine (pattern_k 2, pattern_dim 8, carry of width 2)."""
    import msgspec

    from dualhrq.runtime.batcher import Batcher
    from dualhrq.runtime.host import HostHooks, ModelHost

    hooks = hooks or HostHooks()
    cfg = msgspec.structs.replace(config, model=msgspec.structs.replace(config.model, pattern_k=2, pattern_dim=8),
                                  patterns=patterns or config.patterns)
    engine = engine or CountingEngine()
    serve = msgspec.structs.replace(cfg.serve, **{"max_batch": 8, "max_wait_us": 200, "queue_max": 64, **batcher_kw})
    batcher = Batcher(engine, cfg.act, serve, zero_carry, upstream=hooks.upstream, on_batch=hooks.on_batch)
    host = ModelHost(name=name, config=cfg, inputs=FakeInputs(needs), batcher=batcher, retriever=retriever)
    host.warm(*_warm_bars(needs), rounds=1)
    return host


def _warm_bars(needs):
    from dualhrq.runtime.host import synthetic_bars

    return (synthetic_bars(needs[0], 86_400_000_000_000, 1_699_920_000_000_000_000),
            synthetic_bars(needs[1], 3_600_000_000_000, 1_700_000_000_000_000_000))


class ScriptedPeer:
    """A ROUTER on a free port that keeps every body it receives, decoded, and sends back what
    ``respond(bodies)`` returns for them (encoded reply bodies, to the latest sender; by default nothing: a hung
    or dead server)."""

    def __init__(self, respond=None) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.bodies: list[dict] = []
        self._respond = respond or (lambda bodies: [])
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
                *envelope, body = sock.recv_multipart()
                self.bodies.append(msgpack.unpackb(body))
                for reply in self._respond(self.bodies):
                    sock.send_multipart([*envelope, reply])
        sock.close(0)
        ctx.term()

    def __enter__(self) -> ScriptedPeer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def until(cond, timeout_s: float = 5.0) -> None:
    """Wait for ``cond()`` to hold, failing the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def wire_bars(n: int, step: int = 3_600_000_000_000, end: int = 1_700_000_000_000_000_000) -> dict:
    from dualhrq.runtime.host import synthetic_bars

    b = synthetic_bars(n, step, end)
    return {k: getattr(b, k).tolist() for k in "tohlcv"}


def signal_body(rid: str = "s1", n_coarse: int = 6, n_fine: int = 12, **over) -> dict:
    body = {"type": "signal", "id": rid, "v": 1, "instrument": "EURUSD", "timeframe": "1h",
            "coarse": wire_bars(n_coarse, step=86_400_000_000_000, end=1_699_920_000_000_000_000),
            "fine": wire_bars(n_fine)}
    body.update(over)
    return body


class ServerThread:
    """Runs a Server's asyncio loop in a thread; `with` waits until it is ready and stops it after."""

    def __init__(self, server, *extra) -> None:
        import threading

        self.server, self.extra = server, extra
        self.loop = None
        self.exit_code = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        async def main():
            self.loop = asyncio.get_running_loop()
            tasks = [asyncio.create_task(c) for c in self.extra]
            self.exit_code = await self.server.run(handle_signals=False)
            for t in tasks:
                t.cancel()

        asyncio.run(main())

    def start(self) -> ServerThread:
        """Start the server's thread without waiting for it to be ready."""
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self):
        import time

        self.start()
        until = time.monotonic() + 30
        while not self.server.ready:
            assert self._thread.is_alive(), "server thread died while starting"
            assert time.monotonic() < until, "server not ready in 30 s"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()
        self._thread.join(30)
        assert not self._thread.is_alive(), "server did not stop"

    @property
    def address(self) -> str:
        return self.server.endpoint


# ---------------------------------------------------------------- a load client in its own process


def hammer(address: str, requests: list, in_flight: int, timeout_s: float = 120.0) -> dict:
    """Closed loop over one DEALER: keep `in_flight` of `requests` ((body, reply id, type or code)) out and
    check every reply against what was sent. Imports nothing heavy: it runs in a spawned process."""
    import time

    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    expected: dict[str, str] = {}
    started: dict[str, float] = {}
    anonymous_expected = anonymous_seen = sent = received = 0
    duplicates, mismatched, latencies = [], [], []

    def send_next() -> None:
        nonlocal sent, anonymous_expected
        body, rid, want = requests[sent]
        sent += 1
        if rid is None:
            anonymous_expected += 1
        else:
            expected[rid], started[rid] = want, time.perf_counter()
        sock.send(body)

    until = time.monotonic() + timeout_s
    while sent < min(in_flight, len(requests)):
        send_next()
    while received < len(requests) and time.monotonic() < until:
        if not sock.poll(1000):
            continue
        reply = msgpack.unpackb(sock.recv())
        received += 1
        rid = reply.get("id")
        if rid is None:
            anonymous_seen += 1
        else:
            want = expected.pop(rid, None)
            got = "signal" if reply["type"] == "signal" else reply.get("code")
            if want is None:
                duplicates.append(rid)
            elif want != got:
                mismatched.append((rid, want, got))
            else:
                latencies.append(time.perf_counter() - started.pop(rid))
        if sent < len(requests):
            send_next()
    extra = bool(sock.poll(200))  # nothing more may come: exactly one reply each
    sock.close()
    ctx.term()
    return {"received": received, "unanswered": sorted(expected), "duplicates": duplicates,
            "mismatched": mismatched, "anonymous": (anonymous_expected, anonymous_seen), "extra": extra,
            "latencies": latencies}


def in_process(fn, *args):
    """fn(*args) in a freshly spawned process (no shared GIL, no forked ZeroMQ state); its return value."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# ---------------------------------------------------------------- the real tiny model as a bundle


def build_tiny_bundle(root):
    """An untrained tiny HRM exported the way `dualhrq train` + `dualhrq export` would (feature statistics,
    pattern library, instrument vocabulary from EURUSD hourly): ~10 s, so tests share one per session."""
    from pathlib import Path

    import torch

    from dualhrq.config import load_config
    from dualhrq.data.sources import load_dataset
    from dualhrq.data.windows import build_dataset
    from dualhrq.export.pipeline import ExportOptions, export_bundle
    from dualhrq.inputs import InputPipeline
    from dualhrq.model import HRM
    from dualhrq.model.decision import DecisionRule, class_returns
    from dualhrq.train.checkpoint import save_checkpoint

    root = Path(root)
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "hrm_tiny.yaml")
    windows = build_dataset(load_dataset(cfg.data.dataset), cfg.model, cfg.data, None, cfg.patterns.window)
    inputs = InputPipeline.fit(cfg, windows)
    # A decision rule that trades at any edge, so the served path and the API both go through it (an
    # untrained policy is near uniform: from long the down-labels' returns make CLOSE_LONG pay).
    train = windows.train
    scale = inputs.artifacts.target_scale.out_b
    rule = DecisionRule(1.0, class_returns(windows.action[train], windows.state[train], windows.out_b[train] / scale),
                        cfg.data.cost_bps * 1e-4 / scale, 0.0, "test fixture", 0.0, 0.0)
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", HRM(cfg.model), cfg)
    inputs.with_rule(rule).save(root / "ckpt")
    return export_bundle(root / "ckpt", root / "bundle", ExportOptions(parity_samples=8, threads=1)).bundle


def synthetic_bundle(config, root):
    """An untrained model of ``config`` exported on synthetic feeds (no data, no fitted inputs): for tests of
    what a bundle records and which engines can serve it."""
    from pathlib import Path

    import torch

    from dualhrq.export.inputs import ParityFeeds
    from dualhrq.export.pipeline import ExportOptions, export_bundle
    from dualhrq.export.segment import example_feeds
    from dualhrq.model import HRM
    from dualhrq.train.checkpoint import save_checkpoint

    root = Path(root)
    torch.manual_seed(0)
    save_checkpoint(root / "ckpt", HRM(config.model), config)
    feeds = ParityFeeds(example_feeds(config.model, 8), "synthetic")
    export_bundle(root / "ckpt", root / "b", ExportOptions(carry_segments=1, parity_samples=8), feeds)
    return root / "b"


@contextmanager
def serving(bundle, overlay):
    """A real Server on ``bundle`` (hosts loaded with ``overlay``) in a thread, bound to a free port."""
    from dualhrq.config import ServeConfig
    from dualhrq.runtime.host import load_host
    from dualhrq.runtime.server import Server

    serve = ServeConfig(bind="tcp://127.0.0.1:*", admin_tokens=["t"], drain_timeout_s=2.0)
    server = Server(serve, lambda path, hooks: load_host(path, overlay, hooks), str(bundle))
    with ServerThread(server) as st:
        yield st


_TINY_BUNDLE: list = []


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The tiny bundle, built once per session however many test modules import this fixture."""
    if not _TINY_BUNDLE:
        _TINY_BUNDLE.append(build_tiny_bundle(tmp_path_factory.mktemp("tiny")))
    return _TINY_BUNDLE[0]


def eurusd_history(end: int = -1, bars: int = 2000):
    """`bars` EURUSD hourly bars ending at bar `end` (enough for every window the tiny model needs)."""
    from dualhrq.data.sources import load_dataset

    data = load_dataset("eurusd_1h").bars
    stop = len(data) + end + 1 if end < 0 else end + 1
    return data.slice(stop - bars, stop)


def real_signal_body(rid: str, needs: tuple[int, int], history=None, **over) -> dict:
    """A signal request for the last bar of `history` (default: EURUSD's last bars), carrying the coarse
    (resampled, closed by then) and fine bars the model needs, plus two to spare."""
    from dualhrq.data.resample import default_coarse_rule, resample

    history = eurusd_history() if history is None else history
    coarse = resample(history, default_coarse_rule("1h")).until(int(history.t[-1]))
    coarse, fine = coarse.slice(len(coarse) - needs[0] - 2), history.slice(len(history) - needs[1] - 2)
    body = {"type": "signal", "id": rid, "v": 1, "instrument": "EURUSD", "timeframe": "1h",
            "coarse": {k: getattr(coarse, k).tolist() for k in "tohlcv"},
            "fine": {k: getattr(fine, k).tolist() for k in "tohlcv"}}
    body.update(over)
    return body


# ---------------------------------------------------------------- the commands as a subprocess

CLI_SHIM = ("import argparse, logging, sys; from dualhrq.runtime import commands; "
            "p = argparse.ArgumentParser(); p.add_argument('-v', '--verbose', action='store_true'); "
            "commands.register(p.add_subparsers(required=True)); a = p.parse_args(); "
            "logging.basicConfig(level=logging.INFO); sys.exit(a.func(a))")


def runtime_cli(*args: str) -> list[str]:
    """argv running this package's runtime commands (serve, broker, keys) exactly as the CLI would."""
    import sys

    return [sys.executable, "-c", CLI_SHIM, *args]


def wait_ready(address: str, timeout_s: float = 120.0, proc=None) -> dict:
    import time

    from dualhrq.runtime.client import Client, RequestTimeout

    until = time.monotonic() + timeout_s
    with Client(address, timeout_s=0.5, retries=0) as c:
        while time.monotonic() < until:
            assert proc is None or proc.poll() is None, "server exited before it was ready"
            try:
                pong = c.ping()
                if pong.ready:
                    return pong
            except RequestTimeout:
                pass
    raise AssertionError(f"no ready server at {address} in {timeout_s} s")


# ---------------------------------------------------------------- workers behind the real broker, in one process


class Cluster:
    """The real broker and three real Servers (slots a, b, c) in threads, each with its own ComplianceGate on
    ``compliance`` (one shared state file when it names one); ``loader(path, hooks)`` makes each one's host."""

    def __init__(self, loader, compliance, slots: str = "abc") -> None:
        from dualhrq.runtime.backend import BrokerAddresses
        from dualhrq.runtime.broker import Broker

        self.loader, self.compliance = loader, compliance
        self.addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
        self.broker = Broker(self.addresses, timeout_s=1.0).start()
        self.workers = {slot: self._worker(slot) for slot in slots}
        self._until(lambda: self.broker.live == len(slots))

    def _worker(self, slot: str):
        from dualhrq.compliance.gate import ComplianceGate
        from dualhrq.config import ServeConfig
        from dualhrq.runtime.server import Server

        server = Server(ServeConfig(drain_timeout_s=0.5), self.loader, "b", gate=ComplianceGate(self.compliance),
                        connect=self.addresses.backend, slot=slot)
        return ServerThread(server).__enter__()

    def replace(self, slot: str) -> None:
        """The worker of ``slot`` stops (its gate and memory gone); a new one with a fresh gate takes the slot."""
        self.workers.pop(slot).__exit__(None, None, None)
        self._until(lambda: self.broker.live == len(self.workers))
        self.workers[slot] = self._worker(slot)
        self._until(lambda: self.broker.live == len(self.workers))

    def owner(self, client, body: dict) -> str:
        """The slot whose worker answers ``body``'s instrument: the one whose signal count grows."""
        def signals(worker) -> float:
            return worker.server.metrics.snapshot().get("dualhrq_requests_total|code=ok|type=signal", 0)

        before = {slot: signals(w) for slot, w in self.workers.items()}
        client.request(body)
        grew: list[str] = []

        def counted() -> bool:  # a worker counts a reply just after sending it
            grew[:] = [slot for slot, w in self.workers.items() if signals(w) != before[slot]]
            return bool(grew)

        self._until(counted, timeout_s=5.0)
        assert len(grew) == 1, grew
        return grew[0]

    @staticmethod
    def _until(cond, timeout_s: float = 60.0) -> None:
        until(cond, timeout_s)

    def close(self) -> None:
        import shutil
        from pathlib import Path

        for w in self.workers.values():
            w.__exit__(None, None, None)
        self.broker.stop()
        shutil.rmtree(Path(self.addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)
