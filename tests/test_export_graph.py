"""The exported segment graph: the contract's names, unrolled (no control flow, linear growth), dynamic batch,
external data."""

from __future__ import annotations

import msgspec
import numpy as np
import onnx
import pytest
import torch

from dualhrq.config import ModelConfig
from dualhrq.contract import INPUT_NAMES, OUTPUT_NAMES, ort_session, run_session
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.precision import to_fp16
from dualhrq.export.segment import (
    check_segment_graph,
    example_feeds,
    export_segment,
    graph_files,
    run_torch,
    save_graph,
)
from dualhrq.model import HRM


def _model(cfg: ModelConfig, seed: int = 0) -> HRM:
    torch.manual_seed(seed)
    return HRM(cfg).eval()


@pytest.fixture(scope="module")
def exported(tiny_config, tmp_path_factory):
    model = _model(tiny_config.model)
    return model, export_segment(model, tmp_path_factory.mktemp("graph") / "segment.onnx")


def test_graph_has_the_contract_signature_and_records_n_and_t(exported, tiny_config):
    _, path = exported
    summary = check_segment_graph(path)
    m = tiny_config.model
    assert [v["name"] for v in summary.inputs] == list(INPUT_NAMES)
    assert [v["name"] for v in summary.outputs] == list(OUTPUT_NAMES)
    assert summary.opset >= 18
    shapes = {v["name"]: v["shape"] for v in summary.inputs + summary.outputs}
    assert shapes["pattern_context"] == ["batch", m.pattern_k, m.pattern_dim]
    assert shapes["regime_probs"] == ["batch", m.num_regimes]
    assert shapes["z_L_out"] == ["batch", m.fine_len, m.l_module.hidden_dim]
    dtypes = {v["name"]: v["dtype"] for v in summary.inputs}
    assert dtypes["instrument_id"] == dtypes["timeframe_id"] == "int64" and dtypes["h_tokens"] == "float32"
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert (props["dualhrq.n_cycles"], props["dualhrq.t_steps"]) == (str(m.n_cycles), str(m.t_steps))


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_runs_and_matches_pytorch(exported, tiny_config, batch):
    model, path = exported
    feeds = example_feeds(tiny_config.model, batch, seed=batch)
    got, want = run_session(ort_session(path), feeds), run_torch(model, feeds)
    for name in OUTPUT_NAMES:
        assert got[name].shape == want[name].shape and got[name].shape[0] == batch
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_node_count_grows_linearly_with_the_number_of_updates(tiny_config, tmp_path):
    """N x T = 1x1, 2x2, 3x2 -> N*T + N = 2, 6, 9 module updates (L steps + H updates)."""
    one_layer = tiny_config.model
    one_layer = msgspec.structs.replace(
        one_layer, h_module=msgspec.structs.replace(one_layer.h_module, num_layers=1),
        l_module=msgspec.structs.replace(one_layer.l_module, num_layers=1))  # same structure, faster export
    updates, nodes, softmax = [], [], []
    for n, t in [(1, 1), (2, 2), (3, 2)]:
        cfg = msgspec.structs.replace(one_layer, n_cycles=n, t_steps=t)
        summary = check_segment_graph(export_segment(_model(cfg), tmp_path / f"seg_{n}x{t}.onnx"))
        updates.append(n * t + n)
        nodes.append(summary.node_count)
        softmax.append(summary.op_counts["Softmax"])
    # One attention softmax per block application: exactly one more per update (one layer per module).
    assert [s - softmax[0] for s in softmax] == [u - updates[0] for u in updates]
    # The whole graph grows by the same number of nodes per update, to within the few nodes the exporter
    # shares between the L steps of one cycle (they read the same H state).
    per_update = [(nodes[1] - nodes[0]) / (updates[1] - updates[0]), (nodes[2] - nodes[1]) / (updates[2] - updates[1])]
    assert per_update[0] > 20
    assert per_update[1] == pytest.approx(per_update[0], rel=0.02)


def test_external_data_graph_loads_by_path_and_gives_the_same_outputs(exported, tiny_config, tmp_path):
    _, single = exported
    path = save_graph(onnx.load(str(single)), tmp_path / "segment.onnx", external_data=True)
    files = graph_files(path)
    assert [f.name for f in files] == ["segment.onnx", "segment.onnx.data"]
    assert files[1].stat().st_size > files[0].stat().st_size  # the weights really live in the side file
    feeds = example_feeds(tiny_config.model, 2)
    got, want = run_session(ort_session(path), feeds), run_session(ort_session(single), feeds)
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(got[name], want[name])


def test_check_refuses_a_graph_with_control_flow(tmp_path):
    cond = onnx.helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    one = onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])
    branch = onnx.helper.make_graph([onnx.helper.make_node("Constant", [], ["y"], value=one)], "branch", [], [out])
    if_node = onnx.helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = onnx.helper.make_graph([if_node], "g", [cond], [out])
    path = tmp_path / "if.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ModelLoadError, match="control-flow nodes \\['If'\\]"):
        check_segment_graph(path)


def test_export_refuses_an_opset_below_18(exported, tmp_path):
    model, _ = exported
    with pytest.raises(ConfigurationError, match="opset"):
        export_segment(model, tmp_path / "old.onnx", opset=17)


@pytest.mark.slow
def test_full_size_fp16_graph_is_under_100_mb_and_fp32_matches(full_config, tmp_path):
    model = _model(full_config.model)
    fp32 = export_segment(model, tmp_path / "segment_fp32.onnx")
    fp16 = to_fp16(fp32, tmp_path / "segment_fp16.onnx")
    assert sum(f.stat().st_size for f in graph_files(fp16)) < 100e6
    feeds = example_feeds(full_config.model, 2)
    got, want = run_session(ort_session(fp32), feeds), run_torch(model, feeds)
    assert max(float(np.abs(got[n] - want[n]).max()) for n in OUTPUT_NAMES) <= 1e-4
