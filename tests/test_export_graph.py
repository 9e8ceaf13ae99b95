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
    # shares between the L steps of one cycle (they read the same H state, so one injection per cycle).
    per_update = [(nodes[1] - nodes[0]) / (updates[1] - updates[0]), (nodes[2] - nodes[1]) / (updates[2] - updates[1])]
    assert per_update[0] > 20
    assert per_update[1] == pytest.approx(per_update[0], abs=2)


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


def _float_constants(proto: onnx.ModelProto) -> list[tuple[str, np.ndarray]]:
    tensors = [(t.name, t) for t in proto.graph.initializer]
    tensors += [(n.name, a.t) for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    return [(name, onnx.numpy_helper.to_array(t)) for name, t in tensors if t.data_type in floats]


def test_no_constant_of_the_fp32_or_fp16_graph_is_beyond_fp16_range(exported, tmp_path):
    """Both graphs: the fp32 one, so the converter's clamp is never what keeps the fp16 graph finite."""
    _, fp32 = exported
    fp16 = to_fp16(fp32, tmp_path / "segment_fp16.onnx")
    limit = float(np.finfo(np.float16).max)
    for path in (fp32, fp16):
        beyond = [name for name, v in _float_constants(onnx.load(str(path)))
                  if not (np.isfinite(v).all() and np.abs(v.astype(np.float64)).max(initial=0.0) <= limit)]
        assert beyond == [], f"{path.name}: {beyond}"


def test_the_fp16_graph_loads_when_the_converter_writes_a_cast_once_per_reader(exported, tmp_path, monkeypatch):
    """ONNX Runtime's converter before 1.32 writes the Cast before kept nodes once per reader, all under one
    name; ONNX Runtime refuses such a graph (it happened on the first GPU machine's ONNX Runtime 1.30)."""
    import onnxruntime.transformers.float16 as float16

    model, fp32 = exported
    expected = run_session(ort_session(to_fp16(fp32, tmp_path / "current.onnx")), example_feeds(model.cfg, 2))
    convert = float16.convert_float_to_float16

    def once_per_reader(proto, **kwargs):
        proto = convert(proto, **kwargs)
        copies = [n for n in proto.graph.node if n.op_type == "Cast" and n.name.endswith("_cast_to_fp32_node")]
        assert copies
        proto.graph.node.extend(copies)
        proto.graph.value_info.extend([v for v in proto.graph.value_info if v.name.endswith("_cast_to_fp32")])
        return proto

    monkeypatch.setattr(float16, "convert_float_to_float16", once_per_reader)
    proto = onnx.load(str(to_fp16(fp32, tmp_path / "older.onnx")))
    names = [n.name for n in proto.graph.node]
    assert len(names) == len(set(names))
    out = run_session(ort_session(tmp_path / "older.onnx"), example_feeds(model.cfg, 2))
    assert all(np.array_equal(out[name], expected[name]) for name in OUTPUT_NAMES)


def test_the_fp16_graph_normalises_in_fp32_from_square_to_scale(exported, tmp_path):
    """Every RMSNorm node reads and writes fp32 (no fp16 round trip between its steps), and activations whose
    squares overflow fp16 (|x| > 256) still normalise to finite outputs."""
    from dualhrq.export.precision import norm_nodes

    model, fp32 = exported
    fp16 = to_fp16(fp32, tmp_path / "segment_fp16.onnx")
    proto = onnx.load(str(fp16))
    kept = set(norm_nodes(proto))
    assert kept and {n.op_type for n in proto.graph.node if n.name in kept} >= {"Pow", "ReduceMean", "Sqrt", "Div"}
    producer = {out: n for n in proto.graph.node for out in n.output}
    for node in proto.graph.node:
        if node.name in kept and node.op_type != "Constant":
            for name in node.input:
                source = producer.get(name)
                assert source is None or source.name in kept or source.op_type == "Cast", (node.name, name)
                if source is not None and source.op_type == "Cast":
                    to = next(a.i for a in source.attribute if a.name == "to")
                    assert to == onnx.TensorProto.FLOAT, (node.name, name)
    feeds = example_feeds(model.cfg, 2)
    feeds["z_L"] = np.full_like(feeds["z_L"], 300.0)
    out = run_session(ort_session(fp16), feeds)
    assert all(np.isfinite(out[name]).all() for name in OUTPUT_NAMES)
