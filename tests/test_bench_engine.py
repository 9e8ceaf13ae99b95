"""`dualhrq bench engine`: every available engine timed on the same real inputs, ratios to eager, parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from runtime_fixtures import tiny_bundle  # noqa: F401

from dualhrq.bench.engine import EAGER, EngineRun, summarize_engines, time_interleaved
from dualhrq.cli import main as cli


def test_bench_engine_reports_each_engine_against_eager_with_manifest_parity(tiny_bundle, tmp_path, capsys):
    out, plot = tmp_path / "engine.json", tmp_path / "engine.png"
    rc = cli(["bench", "engine", "--bundle", str(tiny_bundle), "--runs", "6", "--warmup", "1", "--windows", "4",
              "--json", str(out), "--plot", str(plot)])
    assert rc == 0
    report = json.loads(out.read_text())
    engines = report["engines"]
    assert EAGER in engines and "onnx-fp32" in engines
    assert engines[EAGER]["speedup_vs_eager"] == {"p50": 1.0, "p95": 1.0}
    fp32 = engines["onnx-fp32"]
    assert fp32["parity"]["passed"] and 0 < fp32["latency_ms"]["p50"] <= fp32["latency_ms"]["p95"]
    assert "onnx-fp32+spin" in engines  # --spin both: each CPU graph timed with and without spinning pools
    floor = report["floor"]
    assert floor["gflop"] > 0 and floor["floor_ms"] == pytest.approx(engines["floor"]["latency_ms"]["p50"])
    assert floor["gemm_gflops_per_s"] == pytest.approx(floor["gflop"] / floor["floor_ms"] * 1e3)
    assert fp32["x_floor"]["p50"] == pytest.approx(fp32["latency_ms"]["p50"] / floor["floor_ms"])
    assert fp32["x_fp32_p50"] == 1.0
    assert isinstance(report["cpu_flags"], list) and isinstance(report["vnni"], bool)
    assert "real windows" in report["inputs"] and "tensorrt" in report["skipped"]
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "x eager p50" in printed and "skipped tensorrt" in printed
    assert "x floor" in printed and "GFLOP/s on" in printed and "cpu flags:" in printed


def test_an_engine_not_available_here_is_a_clear_error(tiny_bundle, capsys):
    assert cli(["bench", "engine", "--bundle", str(tiny_bundle), "--runs", "1", "--warmup", "0", "--windows", "2",
                "--engines", "torch-eager,tensorrt"]) == 2
    assert "--engines: tensorrt not available here" in capsys.readouterr().err


def test_rounds_are_interleaved_and_rotate_which_engine_goes_first():
    calls: list[tuple[str, int]] = []

    def engine(name: str) -> EngineRun:
        return EngineRun(name, lambda feed: calls.append((name, feed["i"])), lambda: None, None)

    feeds = [{"i": i} for i in range(3)]
    times = time_interleaved([engine("a"), engine("b")], feeds, runs=4, warmup=1, progress=False)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
    assert calls[:4] == [("a", 0), ("b", 0), ("b", 1), ("a", 1)]  # same feed per round, order rotates
    summary = summarize_engines({"a": np.array([1.0, 2.0]), EAGER: np.array([4.0, 8.0])},
                                [engine("a"), engine(EAGER)])
    assert summary["a"]["speedup_vs_eager"]["p50"] == pytest.approx(6.0 / 1.5)


@pytest.mark.parametrize("batch", [1, 3])
def test_floor_counts_the_graphs_weight_matmul_flops_as_pytorch_computes_them(tiny_config, tmp_path, batch):
    """Independent count: every nn.Linear call of the PyTorch segment, 2*M*K*N, plus the pattern query product
    (a weight vector, not a Linear)."""
    from torch import nn

    from dualhrq.bench.floor import FloorRun
    from dualhrq.export.segment import example_feeds, export_segment, run_torch
    from dualhrq.model import HRM

    cfg = tiny_config.model
    torch.manual_seed(0)
    model = HRM(cfg).eval()
    graph = export_segment(model, tmp_path / "segment.onnx")
    feeds = example_feeds(cfg, batch)
    counted = [2 * batch * cfg.pattern_k * cfg.pattern_dim]

    def count(module, inputs, _out):
        x = inputs[0]
        counted.append(2 * (x.numel() // x.shape[-1]) * module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(count)
    run_torch(model, feeds)
    floor = FloorRun(graph, feeds, threads=1)
    try:
        assert floor.flops == sum(counted)
        floor.run()
    finally:
        floor.close()
