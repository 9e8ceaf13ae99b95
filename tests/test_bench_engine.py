"""`dualhrq bench engine`: every available engine timed on the same real inputs, ratios to eager, parity."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from runtime_fixtures import tiny_bundle  # noqa: F401

from dualhrq.bench.engine import EAGER, EngineRun, summarize_engines, time_interleaved
from dualhrq.cli import main as cli


def test_bench_engine_reports_each_engine_against_eager_with_manifest_parity(tiny_bundle, tmp_path, capsys):
    out, plot = tmp_path / "engine.json", tmp_path / "plots" / "engine.png"
    rc = cli(["bench", "engine", "--bundle", str(tiny_bundle), "--runs", "6", "--warmup", "1", "--windows", "4",
              "--json", str(out), "--plot", str(plot.with_suffix(""))])  # no extension: the PNG written is named
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
    independent = floor["independent"]
    assert independent["counts_agree"] and independent["count_differences"] == []
    assert independent["weight_matmuls"] == floor["weight_matmuls"] and independent["gflop"] == floor["gflop"]
    assert independent["floor_ms"] == pytest.approx(sum(r["ms"] for r in independent["shapes"]))
    assert independent["ratio"] == pytest.approx(independent["floor_ms"] / floor["floor_ms"])
    assert "floor-independent" not in engines  # its figures are per shape, in the floor's summary
    assert floor["gemm_gflops_per_s"] == pytest.approx(floor["gflop"] / floor["floor_ms"] * 1e3)
    assert fp32["x_floor"]["p50"] == pytest.approx(fp32["latency_ms"]["p50"] / floor["floor_ms"])
    assert fp32["x_fp32_p50"] == 1.0
    assert isinstance(report["cpu_flags"], list) and isinstance(report["vnni"], bool)
    assert "real windows" in report["inputs"] and "tensorrt" in report["skipped"]
    assert plot.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "x eager p50" in printed and "skipped tensorrt" in printed
    assert "x floor" in printed and "GFLOP/s on" in printed and "cpu flags:" in printed
    assert f"plot: {plot} (made the directory {plot.parent})" in printed
    assert "independent floor:" in printed and "the graph's count agrees" in printed


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


def _traced(bundle_dir, batch: int, hide: int | None = None):
    """The bundle's config and its fp32 graph's traced weight matmuls at `batch`; `hide`: the index of a weight
    matmul whose weight is first read through an Identity, so the graph runs it but not on an initializer."""
    import onnx

    from dualhrq.bench.floor import WEIGHT_MATMUL_OPS, weight_matmuls
    from dualhrq.export.bundle import load_bundle
    from dualhrq.export.segment import example_feeds

    bundle = load_bundle(bundle_dir, verify=False)
    cfg, graph = bundle.config.model, bundle.graph_path("fp32")
    if hide is not None:
        proto = onnx.load(str(graph))
        initializers = {t.name for t in proto.graph.initializer}
        node = [n for n in proto.graph.node if n.op_type in WEIGHT_MATMUL_OPS and n.input[1] in initializers][hide]
        proto.graph.node.insert(0, onnx.helper.make_node("Identity", [node.input[1]], ["hidden_weight"]))
        node.input[1] = "hidden_weight"
        graph = bundle_dir.parent / "hidden_weight.onnx"
        onnx.save(proto, str(graph))
    return cfg, weight_matmuls(graph, example_feeds(cfg, batch))


@pytest.mark.parametrize("batch", [1, 3])
def test_the_configs_weight_matmuls_are_exactly_the_graphs(tiny_bundle, batch):
    from dualhrq.bench.independent_floor import config_matmuls, count_differences, shape_counts

    cfg, traced = _traced(tiny_bundle, batch)
    expected = config_matmuls(cfg, batch)
    assert count_differences(expected, traced) == []
    assert shape_counts(expected) == Counter((w.m, w.k, w.n) for w in traced)
    assert sum(w.flops for w in expected) == sum(w.flops for w in traced)


def test_a_count_that_disagrees_is_reported_by_shape_and_layer(tiny_bundle):
    import msgspec

    from dualhrq.bench.independent_floor import config_matmuls, count_differences

    cfg, traced = _traced(tiny_bundle, 1)
    l, tokens = cfg.l_module, cfg.fine_len
    qkv = f"{tokens}x{l.hidden_dim}x{3 * l.hidden_dim}"
    # A weight matmul the graph runs on a computed weight is one the traced floor misses.
    _, hidden = _traced(tiny_bundle, 1, hide=next(i for i, w in enumerate(traced) if w.n == 3 * l.hidden_dim
                                                  and w.m == tokens))
    runs = cfg.n_cycles * cfg.t_steps * l.num_layers
    assert count_differences(config_matmuls(cfg, 1), hidden) == [
        f"{qkv}: config {runs}, graph {runs - 1} (l_module.attn.qkv)"]
    # A config the graph was not exported from: one more cycle runs every level's matmuls more often.
    differences = count_differences(config_matmuls(msgspec.structs.replace(cfg, n_cycles=cfg.n_cycles + 1), 1),
                                    traced)
    assert f"{qkv}: config {runs + cfg.t_steps * l.num_layers}, graph {runs} (l_module.attn.qkv)" in differences
    # The wrong batch: no shape of the level sequences matches.
    assert len(count_differences(config_matmuls(cfg, 2), traced)) == 2 * len(Counter((w.m, w.k, w.n) for w in traced))


def test_each_matmul_of_the_independent_floor_reads_a_weight_of_its_own():
    import onnx
    from onnx import numpy_helper

    from dualhrq.bench.independent_floor import _matmuls_graph

    proto = onnx.load_from_string(_matmuls_graph((4, 8, 16), 3, np.random.default_rng(0)))
    assert [n.op_type for n in proto.graph.node] == ["MatMul"] * 3
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    assert sorted(n.input[1] for n in proto.graph.node) == sorted(t.name for t in proto.graph.initializer)
    assert all(w.shape == (8, 16) for w in weights)
    assert not np.array_equal(weights[0], weights[1]) and not np.array_equal(weights[1], weights[2])


def test_the_independent_floor_graph_has_the_lowest_ir_version_of_its_opset():
    """onnx writes its newest IR version by default, which an older ONNX Runtime refuses to load."""
    import onnx
    from onnx import helper

    from dualhrq.bench.independent_floor import _matmuls_graph

    proto = onnx.load_from_string(_matmuls_graph((4, 8, 16), 1, np.random.default_rng(0)))
    assert proto.ir_version == helper.find_min_ir_version_for(list(proto.opset_import))


def test_the_independent_floor_is_flagged_beyond_ten_percent_of_the_bench_floor():
    from dualhrq.bench.independent_floor import ConfigMatmul, ShapeTimes, shape_counts, summarize_independent

    expected = [ConfigMatmul("a", 4, 8, 16, 3), ConfigMatmul("b", 2, 8, 4, 1)]
    times = ShapeTimes(shape_counts(expected), threads=1)
    try:
        for _ in range(4):
            times.run()
    finally:
        times.close()
    assert [sorted(r) for r in times.rounds] == [[(2, 8, 4), (4, 8, 16)]] * 4  # every shape in every round
    p50 = times.p50_ms(warmup=1)
    independent_ms = p50[(4, 8, 16)] + p50[(2, 8, 4)]
    same = summarize_independent(expected, [], times, 1, independent_ms)
    assert same["floor_ms"] == pytest.approx(independent_ms) and same["ratio"] == pytest.approx(1.0)
    assert same["agrees"] and not same["counts_agree"]  # no traced matmuls at all: every shape differs
    assert summarize_independent(expected, [], times, 1, independent_ms / 1.09)["agrees"]
    assert not summarize_independent(expected, [], times, 1, independent_ms / 1.11)["agrees"]
    assert not summarize_independent(expected, [], times, 1, independent_ms * 1.12)["agrees"]


def test_the_input_windows_are_cut_with_the_bundles_coarse_rule_and_a_batch_beyond_them_is_refused(
        tiny_bundle, monkeypatch, capsys):
    from dualhrq.bench import requests
    from dualhrq.runtime.host import load_host

    seen = []
    cut = requests.RealWindows.from_dataset.__func__
    monkeypatch.setattr(requests.RealWindows, "from_dataset",
                        classmethod(lambda cls, name, inputs, **kw: seen.append(inputs) or cut(cls, name, inputs, **kw)))
    assert cli(["bench", "engine", "--bundle", str(tiny_bundle), "--batch", "1000000", "--windows", "1"]) == 2
    assert "--batch: 1000000 rows per call, but eurusd_1h has only" in capsys.readouterr().err
    host = load_host(tiny_bundle)
    try:
        assert seen == [requests.ModelInputs(host.needs, host.inputs.coarse_rule, host.inputs.timeframe)]
    finally:
        host.close()
