"""Compliance under scale-out: three real workers behind the real broker, each with its own ComplianceGate on one
shared state file. An instrument's limits hold in total, not per worker, and an SSR restriction survives the
owning worker being replaced and the whole server being stopped and started again. The engine double decides
the action (BUY or SELL, quantity 1); the gate, broker and servers are the real ones."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from runtime_fixtures import CountingEngine, ServerThread, fake_host, free_port, signal_body

from dualhrq.compliance.gate import ComplianceGate
from dualhrq.config import ComplianceConfig, RiskConfig, ServeConfig
from dualhrq.model.vocab import ACTIONS
from dualhrq.runtime import protocol as p
from dualhrq.runtime.broker import Broker
from dualhrq.runtime.client import Client
from dualhrq.runtime.server import Server
from dualhrq.runtime.workers import BrokerAddresses

DAY = 1_699_920_000_000_000_000  # 2023-11-14 00:00 UTC
OPEN = DAY + (14 * 3600 + 35 * 60) * 10**9  # 09:35 New York time: regular hours


class FixedAction(CountingEngine):
    """Every row decides ``action`` (quantity 1: one segment)."""

    action = "BUY"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().run(feeds)
        out["policy_logits"] = np.full_like(out["policy_logits"], -10.0)
        out["policy_logits"][:, ACTIONS.index(self.action)] = 10.0
        return out


def _market(ts: int, last: float, prior_close: float = 100.0) -> dict:
    return {"ts": ts, "last": last, "bid": last - 0.01, "ask": last + 0.01, "prior_close": prior_close,
            "luld_tier": 1}


def _signals(worker: ServerThread) -> float:
    return worker.server.metrics.snapshot().get("dualhrq_requests_total|code=ok|type=signal", 0)


class Cluster:
    """A broker and three workers (slots a, b, c); each worker's gate opens the shared state file."""

    def __init__(self, tiny_config, compliance: ComplianceConfig, engine: FixedAction) -> None:
        self.cfg, self.compliance, self.engine = tiny_config, compliance, engine
        self.addresses = BrokerAddresses.local(f"tcp://127.0.0.1:{free_port()}")
        self.broker = Broker(self.addresses, timeout_s=1.0).start()
        self.workers = {slot: self._worker(slot) for slot in "abc"}
        self._until(lambda: self.broker.live == 3)

    def _worker(self, slot: str) -> ServerThread:
        server = Server(ServeConfig(drain_timeout_s=0.5), lambda path, hooks: fake_host(self.cfg, hooks, engine=self.engine),
                        "b", gate=ComplianceGate(self.compliance), connect=self.addresses.backend, slot=slot)
        return ServerThread(server).__enter__()

    def replace(self, slot: str) -> None:
        """The worker of ``slot`` stops (its gate and memory gone); a new one with a fresh gate takes the slot."""
        self.workers.pop(slot).__exit__(None, None, None)
        self._until(lambda: self.broker.live == 2)
        self.workers[slot] = self._worker(slot)
        self._until(lambda: self.broker.live == 3)

    def owner(self, client: Client, instrument: str) -> str:
        """The slot whose worker answers ``instrument``: the one whose signal count grows."""
        before = {slot: _signals(w) for slot, w in self.workers.items()}
        client.request(signal_body("probe", instrument=instrument))
        grew = [slot for slot, w in self.workers.items() if _signals(w) != before[slot]]
        assert len(grew) == 1, grew
        return grew[0]

    def signal(self, client: Client, rid: str, instrument: str, market: dict) -> p.SignalReply:
        reply = client.request(signal_body(rid, instrument=instrument, market=market))
        assert isinstance(reply, p.SignalReply), reply
        return reply

    @staticmethod
    def _until(cond, timeout_s: float = 20.0) -> None:
        until = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < until, "condition not met in time"
            time.sleep(0.02)

    def close(self) -> None:
        for w in self.workers.values():
            w.__exit__(None, None, None)
        self.broker.stop()
        shutil.rmtree(Path(self.addresses.backend.removeprefix("ipc://")).parent, ignore_errors=True)


def test_position_limit_holds_in_total_and_ssr_survives_a_replaced_worker_and_a_restart(tiny_config, tmp_path):
    compliance = ComplianceConfig(risk=RiskConfig(max_position=1.0), state_path=str(tmp_path / "gate.sqlite"))
    engine = FixedAction()
    cluster = Cluster(tiny_config, compliance, engine)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            # Ten BUY x1 for one instrument: one unit in all, whichever worker holds it.
            bought = [cluster.signal(c, f"buy-{i}", "AAPL", _market(OPEN + i * 10**9, 100.0)) for i in range(10)]
            assert sum(r.quantity for r in bought if r.action == "BUY") <= 1.0
            assert sum(r.compliance.allowed for r in bought) == 1, [r.compliance for r in bought]

            # A 12% fall from the prior close triggers Rule 201: a short sale at the bid is refused from then on.
            engine.action = "SELL"
            first = cluster.signal(c, "ssr-0", "TSLA", _market(OPEN, 88.0))
            assert not first.compliance.allowed and first.action == "HOLD", first.compliance
            owner = cluster.owner(c, "TSLA")
            cluster.replace(owner)
            after = cluster.signal(c, "ssr-1", "TSLA", _market(OPEN + 60 * 10**9, 88.5))
            assert not after.compliance.allowed and after.action == "HOLD", after.compliance
    finally:
        cluster.close()

    cluster = Cluster(tiny_config, compliance, engine)  # the whole server stopped and started again
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            again = cluster.signal(c, "ssr-2", "TSLA", _market(OPEN + 120 * 10**9, 89.0))
            assert not again.compliance.allowed and again.action == "HOLD", again.compliance
            engine.action = "BUY"
            more = cluster.signal(c, "buy-after", "AAPL", _market(OPEN + 180 * 10**9, 100.0))
            assert not more.compliance.allowed, more.compliance  # still long one unit: the limit remembers
    finally:
        cluster.close()
