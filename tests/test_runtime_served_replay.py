"""`dualhrq replay --connect`: history through a server of three workers, re-checked by the replay's checker,
decides exactly what the same model and a gate in this process decide on the same markets."""

from __future__ import annotations

from runtime_fixtures import Cluster, eurusd_history, tiny_bundle  # noqa: F401

from dualhrq.compliance.gate import ComplianceGate
from dualhrq.compliance.replay import replay
from dualhrq.config import ComplianceConfig
from dualhrq.runtime.client import Client
from dualhrq.runtime.host import load_host
from dualhrq.runtime.served_replay import HOLD, served_decisions
from dualhrq.runtime.signals import signal_fn_from_bundle

OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 2}, "patterns": {"timeout_ms": 5000.0}}


def test_a_replay_through_three_workers_has_no_violations_and_decides_as_in_process(tiny_bundle):
    bars = eurusd_history(end=-50, bars=1250)  # the first ~1,000 bars are the model's history: ~250 decisions
    cluster = Cluster(lambda path, hooks: load_host(tiny_bundle, OVERLAY, hooks), ComplianceConfig())
    served, markets = {}, {}
    try:
        with Client(cluster.addresses.frontend, timeout_s=30, retries=0) as client:
            decide = served_decisions(client, bars, "EURUSD")

            def recorded(i, market):
                served[i], markets[i] = decide(i, market), market
                return served[i]

            report = replay(bars, None, None, ComplianceGate(), instrument="EURUSD", decide=recorded)
    finally:
        cluster.close()
    assert report.violations == [] and report.decisions == len(served)
    sent = [i for i, d in served.items() if d is not HOLD]
    assert len(sent) > 100

    # The same model in this process, and a gate here fed the markets the server's gate saw, in order.
    signal, gate = signal_fn_from_bundle(tiny_bundle, bars), ComplianceGate()
    for i in sent:
        want = gate.check("EURUSD", *signal(i), markets[i])
        got = served[i]
        assert (got.action, got.allowed, got.original_action, got.reasons) == \
            (want.action, want.allowed, want.original_action, want.reasons), i
        assert abs(got.quantity - want.quantity) < 1e-5, i
    assert len({served[i].original_action for i in sent}) > 1  # the model does not say one thing throughout
