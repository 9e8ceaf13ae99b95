"""Compliance under `serve --workers 3`, as processes: the supervisor, the broker and the real gates on one
state file, with bundles whose policy always says one thing (BUY, or SELL) and quantity 1. The position limit
holds in total; an SSR restriction holds after the owning worker is SIGKILLed and replaced, and after the whole
server is stopped and started again."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml
from runtime_fixtures import free_port, real_signal_body, runtime_cli, wait_ready

from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import Client

TOKEN = "c-token"
OPEN = 1_699_920_000_000_000_000 + (14 * 3600 + 35 * 60) * 10**9  # 2023-11-14 09:35 New York: regular hours


def _fixed_bundles(root, cfg) -> dict[str, str]:
    """Two bundles of one input pipeline: the policy says BUY (or SELL) with quantity 1 whatever the bars."""
    import torch

    from dualhrq.data.sources import load_dataset
    from dualhrq.data.windows import build_dataset
    from dualhrq.export.pipeline import ExportOptions, export_bundle
    from dualhrq.inputs import InputPipeline
    from dualhrq.model import HRM
    from dualhrq.model.vocab import ACTIONS
    from dualhrq.train.checkpoint import save_checkpoint

    windows = build_dataset(load_dataset(cfg.data.dataset), cfg.model, cfg.data, None, cfg.patterns.window)
    inputs = InputPipeline.fit(cfg, windows)  # no decision rule: the policy's argmax is served
    bundles = {}
    for action in ("BUY", "SELL"):
        torch.manual_seed(0)
        model = HRM(cfg.model)
        with torch.no_grad():
            model.heads.policy.weight.zero_()
            model.heads.policy.bias.fill_(-20.0)
            model.heads.policy.bias[ACTIONS.index(action)] = 20.0
            model.heads.quantity.weight.zero_()
            model.heads.quantity.bias.fill_(30.0)  # sigmoid -> 1: quantity_max
        save_checkpoint(root / action / "ckpt", model, cfg)
        inputs.save(root / action / "ckpt")
        out = export_bundle(root / action / "ckpt", root / action / "bundle", ExportOptions(parity_samples=8, threads=1))
        bundles[action] = str(out.bundle)
    return bundles


class Served:
    """`dualhrq serve --bundle B --workers 3` with the given overlay, as a subprocess."""

    def __init__(self, bundle: str, config, log) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(runtime_cli("serve", "--bundle", bundle, "--config", str(config), "--bind",
                                                 self.address, "--workers", "3"),
                                     stdout=log.open("a"), stderr=subprocess.STDOUT)
        self.pong = wait_ready(self.address, proc=self.proc)
        self.until_workers(3)

    def until_workers(self, n: int, timeout_s: float = 120.0) -> None:
        until = time.monotonic() + timeout_s
        with Client(self.address, timeout_s=2, retries=0) as c:
            while c.ping().workers != n:
                assert time.monotonic() < until, f"not {n} workers in time"
                time.sleep(0.1)

    def signal(self, rid: str, instrument: str, market: dict) -> p.SignalReply:
        needs = (self.pong.needs.coarse, self.pong.needs.fine)
        with Client(self.address, timeout_s=30, retries=0) as c:
            reply = c.request(real_signal_body(rid, needs, instrument=instrument, market=market))
        assert isinstance(reply, p.SignalReply), reply
        return reply

    def owner_pid(self, instrument: str, market: dict) -> int:
        """The pid of the worker that answers ``instrument``: the one whose signal count grows."""
        def counts() -> dict[int, float]:
            seen = {}
            with Client(self.address, timeout_s=5, retries=0) as c:
                for _ in range(6):  # requests without an instrument go round the workers
                    d = c.admin("stats", token=TOKEN).detail
                    seen[d["pid"]] = d["counters"].get("dualhrq_requests_total|code=ok|type=signal", 0)
            return seen

        before = counts()
        self.signal("probe", instrument, market)
        grew = [pid for pid, n in counts().items() if n != before.get(pid)]
        assert len(grew) == 1, grew
        return grew[0]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _market(ts: int, last: float) -> dict:
    return {"ts": ts, "last": last, "bid": last - 0.01, "ask": last + 0.01, "prior_close": 100.0, "luld_tier": 1}


@pytest.mark.slow  # two bundles exported, three worker processes started three times: ~2 min on this CPU
def test_three_workers_hold_the_position_limit_in_total_and_keep_ssr_across_a_kill_and_a_restart(tiny_config,
                                                                                                  tmp_path):
    bundles = _fixed_bundles(tmp_path, tiny_config)
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "serve": {"intra_op_threads": 1, "max_batch": 2, "admin_tokens": [TOKEN], "drain_timeout_s": 2.0},
        "compliance": {"risk": {"max_position": 1.0}, "state_path": str(tmp_path / "gate.sqlite")}}))
    log = tmp_path / "server.log"
    try:
        buy = Served(bundles["BUY"], config, log)
        try:
            replies = [buy.signal(f"buy-{i}", "AAPL", _market(OPEN + i * 10**9, 100.0)) for i in range(10)]
        finally:
            buy.stop()
        assert sum(r.quantity for r in replies if r.action == "BUY") <= 1.0
        assert sum(r.compliance.allowed for r in replies) == 1, [r.compliance for r in replies]

        sell = Served(bundles["SELL"], config, log)
        try:
            first = sell.signal("ssr-0", "TSLA", _market(OPEN, 88.0))  # 12% below the prior close: Rule 201
            assert not first.compliance.allowed and "ssr" in first.compliance.reasons, first.compliance
            victim = sell.owner_pid("TSLA", _market(OPEN + 10**9, 95.0))
            os.kill(victim, signal.SIGKILL)
            sell.until_workers(2, timeout_s=10)
            sell.until_workers(3)
            after = sell.signal("ssr-1", "TSLA", _market(OPEN + 60 * 10**9, 95.0))
            assert not after.compliance.allowed and "ssr" in after.compliance.reasons, after.compliance
        finally:
            sell.stop()

        again = Served(bundles["SELL"], config, log)  # the whole server stopped and started again
        try:
            third = again.signal("ssr-2", "TSLA", _market(OPEN + 120 * 10**9, 95.0))
            assert not third.compliance.allowed and "ssr" in third.compliance.reasons, third.compliance
        finally:
            again.stop()
    except BaseException:
        print(log.read_text(errors="replace")[-4000:])
        raise


def test_a_locked_compliance_store_fails_its_request_long_before_a_broker_would_count_the_worker_lost():
    # The lock wait blocks the worker's loop, heartbeats included: past the broker's timeout every instrument of
    # the worker would move and its requests in flight fail, for one stuck lock.
    from dualhrq.compliance import journal
    from dualhrq.runtime import backend

    assert journal.BUSY_TIMEOUT_MS / 1000 <= backend.TIMEOUT_S / 2
