"""`dualhrq bench engine`: every available engine timed on the same real inputs, ratios to eager, parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
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
    assert "real windows" in report["inputs"] and "tensorrt" in report["skipped"]
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "x eager p50" in printed and "skipped tensorrt" in printed


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
