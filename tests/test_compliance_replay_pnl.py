"""`replay --bundle B --pnl`: the bundle's actions after the gate, filled by validation's execution model, and
their agreement with the bundle's own weights in PyTorch on the held-out window."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from runtime_fixtures import tiny_bundle  # noqa: F401
from subcommand import run_subcommand

from dualhrq.compliance.commands import register
from dualhrq.compliance.pnl import held_out_window, pnl_replay, reference_signals
from dualhrq.config import ComplianceConfig
from dualhrq.data.sources import load_dataset
from dualhrq.export.bundle import load_bundle
from dualhrq.runtime.signals import signal_fn_from_bundle

BARS = 120  # of the held-out window: enough decisions to trade, few enough for a fast test


@pytest.fixture(scope="module")
def trading_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a decision rule that trades at any expected gain (no cost margin), re-exported."""
    from dualhrq.export.pipeline import ExportOptions, export_bundle
    from dualhrq.inputs import InputPipeline
    from dualhrq.train.checkpoint import read_checkpoint_meta

    root = tmp_path_factory.mktemp("trading")
    shutil.copytree(Path(tiny_bundle).parent / "ckpt", root / "ckpt")
    inputs = InputPipeline.load(root / "ckpt", read_checkpoint_meta(root / "ckpt").config)
    inputs.with_rule(msgspec.structs.replace(inputs.rule, cost=0.0, min_edge=0.0)).save(root / "ckpt")
    return export_bundle(root / "ckpt", root / "bundle", ExportOptions(parity_samples=8, threads=1)).bundle


def test_the_fp32_bundle_decides_as_its_weights_in_pytorch_and_its_fills_pay_the_execution_costs(trading_bundle):
    tiny_bundle = trading_bundle
    dataset = load_dataset("eurusd_1h")
    bundle = load_bundle(tiny_bundle, verify=False)
    cfg = bundle.config
    start, end, kind = held_out_window(dataset, bundle)
    assert kind == "held-out tail" and end - start > 500  # a fifth of 5,000 hourly bars
    window = (start, start + BARS - 1, kind)
    report, pnl = pnl_replay(tiny_bundle, dataset, signal_fn_from_bundle(tiny_bundle, dataset.bars),
                             reference_signals(tiny_bundle, dataset), ComplianceConfig(), window=window)
    assert report.violations == []
    assert pnl.bars == BARS and pnl.agreement >= 0.995 and pnl.parity_ok
    served = pnl.served
    assert served.turnover > 0, "the fixture's decision rule trades"
    fee = cfg.data.cost_bps / 2
    np.testing.assert_allclose(served.fee_cost, served.turnover * BARS * fee * 1e-4, rtol=1e-9)
    assert np.isfinite(served.sharpe) and served.net_return < served.gross_return


def test_a_reference_that_decides_otherwise_fails_the_parity_bar(tiny_bundle):
    dataset = load_dataset("eurusd_1h")
    start, _, kind = held_out_window(dataset, load_bundle(tiny_bundle, verify=False))
    served = signal_fn_from_bundle(tiny_bundle, dataset.bars)
    _, pnl = pnl_replay(tiny_bundle, dataset, served, lambda i: ("HOLD", 0.0), ComplianceConfig(),
                        window=(start, start + 40, kind))
    assert pnl.agreement < 0.995 and not pnl.parity_ok
    assert pnl.reference.turnover == 0 and pnl.disagreements


def test_cli_pnl_writes_the_report_and_exits_zero_at_parity(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "pnl.json"
    code = run_subcommand(register, "replay", "--data", "eurusd_1h", "--bundle", str(tiny_bundle), "--pnl",
                          "--pnl-bars", "30", "--pnl-json", str(out))
    assert code == 0
    report = json.loads(out.read_text())
    assert report["bars"] == 30 and report["parity_ok"] and report["window"] == "held-out tail"
    assert set(report["served"]) >= {"sharpe", "gross_return", "spread_cost", "fee_cost", "impact_cost",
                                     "break_even_bps"}
    assert "Action agreement with the PyTorch model" in capsys.readouterr().out


def test_pnl_on_bars_the_bundle_never_saw_starts_at_the_first_bar_with_enough_history(tiny_bundle, tmp_path):
    from dualhrq.runtime.signals import RequestWindows

    b = load_dataset("eurusd_1h").bars
    path = tmp_path / "other_eurusd.csv"  # not one of the bundle's training datasets
    pd.DataFrame({"timestamp": pd.to_datetime(b.t, utc=True), "open": b.o, "high": b.h, "low": b.l, "close": b.c,
                  "volume": b.v}).to_csv(path, index=False)
    out = tmp_path / "pnl.json"
    code = run_subcommand(register, "replay", "--data", str(path), "--bundle", str(tiny_bundle), "--pnl",
                          "--pnl-bars", "20", "--pnl-json", str(out))
    report = json.loads(out.read_text())
    assert report["window"] == "all bars" and report["bars"] == 20
    assert code == 0 and report["parity_ok"]

    dataset = load_dataset(path)
    bundle = load_bundle(tiny_bundle, verify=False)
    start, end, kind = held_out_window(dataset, bundle)
    inputs = bundle.inputs()
    windows = RequestWindows(dataset.bars, inputs.coarse_rule, inputs.needs)
    assert kind == "all bars" and end == len(dataset.bars) - 2
    assert start > 0 and windows.at(start) is not None and windows.at(start - 1) is None
    reference = reference_signals(tiny_bundle, dataset)
    assert reference(0) == reference(start - 1) == ("HOLD", 0.0)  # as the served signals, not a DataError


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--pnl-json", "--pnl-markdown"])
def test_an_output_file_in_a_missing_directory_is_refused_before_the_replay(flag, tiny_bundle, tmp_path):
    from dualhrq.errors import ConfigurationError

    target = tmp_path / "missing" / "report.out"
    with pytest.raises(ConfigurationError, match=f"^{flag}: .*no directory"):
        run_subcommand(register, "replay", "--data", "eurusd_1h", "--bundle", str(tiny_bundle), "--pnl",
                       "--pnl-bars", "5", flag, str(target))
