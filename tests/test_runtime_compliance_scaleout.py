"""Compliance under scale-out: three real workers behind the real broker, each with its own ComplianceGate on one
shared state file. An instrument's limits hold in total, not per worker, and an SSR restriction survives the
owning worker being replaced and the whole server being stopped and started again. The engine double decides
the action (BUY or SELL, quantity 1); the gate, broker and servers are the real ones."""

from __future__ import annotations

import numpy as np
from runtime_fixtures import Cluster, CountingEngine, fake_host, signal_body

from dualhrq.config import ComplianceConfig, RiskConfig
from dualhrq.model.vocab import ACTIONS
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import Client

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


def _signal(client: Client, rid: str, instrument: str, market: dict) -> p.SignalReply:
    reply = client.request(signal_body(rid, instrument=instrument, market=market))
    assert isinstance(reply, p.SignalReply), reply
    return reply


def _loader(tiny_config, engine: FixedAction):
    return lambda path, hooks: fake_host(tiny_config, hooks, engine=engine)


def _market(ts: int, last: float, prior_close: float = 100.0) -> dict:
    return {"ts": ts, "last": last, "bid": last - 0.01, "ask": last + 0.01, "prior_close": prior_close,
            "luld_tier": 1}


def test_position_limit_holds_in_total_and_ssr_survives_a_replaced_worker_and_a_restart(tiny_config, tmp_path):
    compliance = ComplianceConfig(risk=RiskConfig(max_position=1.0), state_path=str(tmp_path / "gate.sqlite"))
    engine = FixedAction()
    cluster = Cluster(_loader(tiny_config, engine), compliance)
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            # Ten BUY x1 for one instrument: one unit in all, whichever worker holds it.
            bought = [_signal(c, f"buy-{i}", "AAPL", _market(OPEN + i * 10**9, 100.0)) for i in range(10)]
            assert sum(r.quantity for r in bought if r.action == "BUY") <= 1.0
            assert sum(r.compliance.allowed for r in bought) == 1, [r.compliance for r in bought]

            # A 12% fall from the prior close triggers Rule 201: a short sale at the bid is refused from then on.
            engine.action = "SELL"
            first = _signal(c, "ssr-0", "TSLA", _market(OPEN, 88.0))
            assert not first.compliance.allowed and first.action == "HOLD", first.compliance
            owner = cluster.owner(c, signal_body("probe", instrument="TSLA"))
            cluster.replace(owner)
            after = _signal(c, "ssr-1", "TSLA", _market(OPEN + 60 * 10**9, 95.0))
            assert not after.compliance.allowed and after.action == "HOLD", after.compliance
    finally:
        cluster.close()

    cluster = Cluster(_loader(tiny_config, engine), compliance)  # the whole server stopped and started again
    try:
        with Client(cluster.addresses.frontend, timeout_s=10, retries=0) as c:
            again = _signal(c, "ssr-2", "TSLA", _market(OPEN + 120 * 10**9, 95.0))
            assert not again.compliance.allowed and again.action == "HOLD", again.compliance
            engine.action = "BUY"
            more = _signal(c, "buy-after", "AAPL", _market(OPEN + 180 * 10**9, 100.0))
            assert not more.compliance.allowed, more.compliance  # still long one unit: the limit remembers
    finally:
        cluster.close()
