"""Parity of the exported graphs against PyTorch on real-data inputs (held-out EURUSD windows), the carry
over several segments, and the reduced-precision variants (int8 leaves attention alone, fp16 keeps fp32 I/O)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from dualhrq.contract import OUTPUT_NAMES, ort_session, run_session
from dualhrq.export.engine_parity import engine_parity
from dualhrq.export.engines import Engine, OnnxEngine, TorchEngine
from dualhrq.export.inputs import parity_feeds
from dualhrq.export.parity import FP32_MAX_ABS_ERR, HALTING_TIE, MAX_QUANTITY_ERR, measure_parity
from dualhrq.export.precision import Int8Scheme, int8_schemes, to_fp16, to_int8, weight_matmuls
from dualhrq.export.segment import export_segment, run_torch
from dualhrq.model import HRM
from dualhrq.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def setup(tiny_config, tmp_path_factory):
    """A tiny model, its fp32 graph, and 32 real-data feeds built the way the export builds them."""
    root = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    model = HRM(tiny_config.model).eval()
    save_checkpoint(root / "ckpt", model, tiny_config)
    feeds = parity_feeds(root / "ckpt", tiny_config, samples=32)
    graph = export_segment(model, root / "segment_fp32.onnx")
    return model, graph, feeds, run_torch(model, feeds.feeds), root



def activation_matmuls(proto: onnx.ModelProto) -> list[str]:
    """MatMuls whose second input is not a weight (attention's QK^T and AV): int8 must leave them in float."""
    weights = {t.name for t in proto.graph.initializer}
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] not in weights]

def test_parity_inputs_are_held_out_real_windows_with_both_pattern_paths(setup, tiny_config):
    _, _, feeds, _, _ = setup
    x = feeds.feeds
    assert "eurusd_1h" in feeds.source and "held-out" in feeds.source
    assert x["h_tokens"].shape == (32, tiny_config.model.coarse_len, tiny_config.model.coarse_features)
    windows = x["l_tokens"].reshape(32, -1)
    assert len(np.unique(windows, axis=0)) == 32  # 32 different windows, not one repeated
    has_patterns = x["pattern_mask"].sum(axis=1) > 0
    assert has_patterns[::2].all() and not has_patterns[1::2].any()  # with patterns / regime-only, alternating
    assert not x["z_H"].any() and not x["z_L"].any()  # a request's first segment starts from the zero carry


def test_parity_inputs_take_the_validation_slice_when_the_held_out_tail_is_too_short(setup, tiny_config):
    import re

    _, _, _, _, root = setup
    feeds = parity_feeds(root / "ckpt", tiny_config, samples=100_000)
    found = re.search(r"(\d+) of (\d+) held-out windows and (\d+) of the (\d+) of the validation slice", feeds.source)
    assert found, feeds.source
    tail, tail_all, val, val_all = map(int, found.groups())
    assert tail == tail_all and val == val_all > 0  # asked for more than both hold: all of both
    windows = feeds.feeds["l_tokens"].reshape(tail + val, -1)
    assert len(np.unique(windows, axis=0)) == tail + val
    assert "validation" not in parity_feeds(root / "ckpt", tiny_config, samples=tail).source  # the tail suffices


def test_fp32_graph_matches_pytorch_on_real_data(setup):
    model, graph, feeds, reference, _ = setup
    parity = measure_parity(reference, run_session(ort_session(graph), feeds.feeds), "fp32")
    assert parity.passed, parity.failures
    assert all(err <= FP32_MAX_ABS_ERR for err in parity.max_abs_err.values())
    assert parity.action_agreement == 1.0


def test_carry_fed_back_over_three_segments_matches_pytorch(setup):
    model, graph, feeds, reference, _ = setup
    engine = OnnxEngine(graph, threads=1, max_batch=len(reference["policy_logits"]))
    carry = engine_parity(model, engine, feeds.feeds, "fp32", segments=3)
    assert carry.passed, carry.failures
    assert carry.segment.action_agreement == 1.0 and carry.halting_agreement == [1.0] * 3
    assert len(carry.carry_max_abs_err) == 3 and max(carry.carry_max_abs_err) <= FP32_MAX_ABS_ERR
    # The carry really was fed back: a third segment differs from the first.
    third = dict(feeds.feeds)
    for _ in range(2):
        out = run_torch(model, third)
        third.update(z_H=out["z_H_out"], z_L=out["z_L_out"])
    assert np.abs(run_torch(model, third)["z_L_out"] - reference["z_L_out"]).max() > 1e-2


def test_parity_check_fails_a_graph_that_drifts(setup):
    _, _, _, reference, _ = setup
    drifted = {k: v.copy() for k, v in reference.items()}
    drifted["forecast_fine"] += 1e-3
    fp32 = measure_parity(reference, drifted, "fp32")
    assert not fp32.passed and any("forecast_fine" in f for f in fp32.failures)
    flipped = {k: v.copy() for k, v in reference.items()}
    flipped["policy_logits"][:1] = -flipped["policy_logits"][:1]  # one sample's action changes
    assert not measure_parity(reference, flipped, "fp32").passed
    noisy = {k: v.copy() for k, v in reference.items()}
    noisy["forecast_coarse"] = np.random.default_rng(0).permutation(noisy["forecast_coarse"])
    reduced = measure_parity(reference, noisy, "int8")
    assert not reduced.passed and any("forecast_coarse: correlation" in f for f in reduced.failures)


def _perturbed(reference, name, change):
    out = {k: v.copy() for k, v in reference.items()}
    change(out[name])
    return out


def _flip_first(rows):
    rows[:1] = np.roll(rows[:1], 1, axis=-1)  # the first window's argmax (or sign of halt - continue) changes


def _shuffle(values):
    values[:] = np.random.default_rng(0).permutation(values)


@pytest.mark.parametrize(("name", "change", "failure"), [
    ("quantity", lambda q: q.__iadd__(1.5 * MAX_QUANTITY_ERR), "quantity: max abs error"),
    ("q_logits", _flip_first, "halting:"),
    ("value", _shuffle, "value: correlation"),
    ("regime_probs", _flip_first, "regime argmax:"),
    ("policy_logits", _flip_first, "actions:"),
    ("forecast_fine", _shuffle, "forecast_fine: correlation"),
])
def test_each_reduced_precision_gate_fails_when_its_bound_is_broken(setup, name, change, failure):
    """On 32 windows one flipped decision is a 3% disagreement, past every 99% agreement bound."""
    _, _, _, reference, _ = setup
    assert measure_parity(reference, reference, "int8").passed
    if name == "q_logits":  # the untrained Q-head is at a tie everywhere: give fp32 a decision to disagree with
        reference = _perturbed(reference, "q_logits", lambda q: q.__setitem__((slice(None), 0), q[:, 0] + 1.0))
    broken = measure_parity(reference, _perturbed(reference, name, change), "int8")
    assert not broken.passed and any(f.startswith(failure) for f in broken.failures), broken.failures


def test_halting_is_compared_where_fp32_decides_and_a_tie_never_fails(setup):
    _, _, _, reference, _ = setup

    def margins(values):  # q_halt - q_continue per window
        return _perturbed(reference, "q_logits", lambda q: q.__setitem__((slice(None), 1), q[:, 0] - values))

    n = len(reference["q_logits"])
    tie = np.full(n, HALTING_TIE / 2)
    parity = measure_parity(margins(tie), margins(-tie), "int8")
    assert parity.halting_decided == 0 and parity.passed  # every sign flipped, but fp32 decided nothing
    decided = np.r_[HALTING_TIE / 2, np.ones(n - 1)]
    parity = measure_parity(margins(decided), margins(np.r_[decided[:1], -decided[1:2], decided[2:]]), "int8")
    assert parity.halting_decided == n - 1 and not parity.passed
    assert any(f.startswith("halting:") for f in parity.failures)


class _DriftingEngine(Engine):
    """Right on a first segment, but its forecasts drift once a carry goes in."""

    def __init__(self, model: HRM) -> None:
        self._model, self.name, self.max_batch = model, "drifting", 64

    def run(self, feeds):
        out = run_torch(self._model, feeds)
        if feeds["z_L"].any():  # not the first segment: the carry went in
            out["forecast_fine"] = np.random.default_rng(1).permutation(out["forecast_fine"])
        return out


def test_carry_parity_holds_every_segment_to_the_precisions_bounds(setup):
    """A candidate that matches on the first segment but drifts through its carry fails on a later segment."""
    model, _, feeds, _, _ = setup
    carry = engine_parity(model, _DriftingEngine(model), feeds.feeds, "int8", segments=3)
    assert carry.segment.passed and not carry.passed
    assert carry.carry_failures[0].startswith("segment 2: forecast_fine: correlation")
    assert engine_parity(model, TorchEngine(model, max_batch=64), feeds.feeds, "int8", segments=2).passed


def test_int8_quantises_every_weight_matmul_and_leaves_activation_products_float(setup, tiny_config):
    _, graph, feeds, reference, root = setup
    scheme = int8_schemes(vnni=False)[0]
    path = to_int8(graph, root / "segment_int8.onnx", scheme)
    q = onnx.load(str(path))
    weights = {t.name for t in q.graph.initializer}
    integer = [n for n in q.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert integer and all(n.input[1] in weights for n in integer)  # B is a stored quantised weight
    assert len(integer) == len(weight_matmuls(onnx.load(str(graph))))
    # Left in float: only the Gemm heads and conditioning layers (a handful of rows; the quantizer writes them
    # as MatMul + Add).
    assert all(name.endswith("/Gemm_MatMul") for name in weight_matmuls(q))
    scopes = {scope for n in integer for scope in ("/attn/", "/mlp/", "/h_to_l", "/l_to_h", "/input/")
              if scope in n.name}
    assert scopes == {"/attn/", "/mlp/", "/h_to_l", "/l_to_h", "/input/"}
    # Attention's two activation products per block stay float MatMuls: 2 per block application.
    m = tiny_config.model
    blocks = m.l_module.num_layers * m.n_cycles * m.t_steps + m.h_module.num_layers * m.n_cycles
    float_matmuls = activation_matmuls(q)
    assert len(float_matmuls) == 2 * blocks == len(activation_matmuls(onnx.load(str(graph))))
    assert all("/attn" in name for name in float_matmuls)
    parity = measure_parity(reference, run_session(ort_session(path), feeds.feeds), "int8")
    assert set(parity.max_abs_err) == set(OUTPUT_NAMES)
    assert 0.5 <= parity.action_agreement <= 1.0
    assert all(0.9 < c <= 1.0 for c in parity.forecast_corr.values())  # close, whether or not it passes


def test_int8_scheme_follows_the_cpu_and_every_scheme_loads(setup):
    """VNNI: signed weights at full range first; AVX2 only: never signed weights at full range (they saturate)."""
    _, graph, feeds, _, root = setup
    assert int8_schemes(vnni=True)[0] == Int8Scheme("s8", False, True)
    avx2 = int8_schemes(vnni=False)
    assert not any(s.weights == "s8" and not s.reduce_range for s in avx2)
    # Narrower scopes last, each within the one before.
    assert [s.scope for s in avx2] == [s.scope for s in int8_schemes(vnni=True)] == ["all", "all", "fine", "mlp"]
    proto = onnx.load(str(graph))
    every, fine, mlp = (set(weight_matmuls(proto, scope)) for scope in ("all", "fine", "mlp"))
    assert mlp < fine < every
    assert all("/mlp/" in n or "/l_module/" in n for n in fine) and not any("/h_module/" in n and "/attn/" in n
                                                                             for n in fine)
    assert any("/l_module/" in n and "/attn/" in n for n in fine)
    for i, scheme in enumerate({*avx2, *int8_schemes(vnni=True)}):
        path = to_int8(graph, root / f"scheme{i}.onnx", scheme)
        out = run_session(ort_session(path), feeds.feeds)
        assert all(np.isfinite(out[name]).all() for name in OUTPUT_NAMES)
        integer = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulInteger"]
        assert integer
        assert scheme.scope == "all" or all("/mlp/" in n or "/l_module/" in n for n in integer)
        assert scheme.scope != "mlp" or all("/mlp/" in n for n in integer)


def test_fp16_keeps_fp32_io_and_passes_on_both_pattern_paths(setup):
    _, graph, feeds, reference, root = setup
    path = to_fp16(graph, root / "segment_fp16.onnx")
    proto = onnx.load(str(path))
    io_types = {v.type.tensor_type.elem_type for v in list(proto.graph.input) + list(proto.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    out = run_session(ort_session(path), feeds.feeds)
    assert all(np.isfinite(out[name]).all() for name in OUTPUT_NAMES)  # incl. the fully masked rows
    parity = measure_parity(reference, out, "fp16")
    assert parity.passed, parity.failures



def test_an_int8_graph_chosen_on_a_vnni_cpu_serves_elsewhere_with_a_warning(monkeypatch, caplog):
    import dualhrq.cpu
    from dualhrq.export.engines import _note_int8_scheme

    monkeypatch.setattr(dualhrq.cpu, "has_vnni", lambda flags=None: False)
    with caplog.at_level("WARNING", logger="dualhrq.export.engines"):
        _note_int8_scheme({"chosen_for": "avx2 (no vnni)", "scheme": "s8 reduce_range per-channel"})
        assert not caplog.records
        _note_int8_scheme({"chosen_for": "vnni", "scheme": "s8 per-channel"})
    assert "chosen on a CPU with VNNI" in caplog.text
