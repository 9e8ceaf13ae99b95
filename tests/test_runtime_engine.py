"""Engines, the serve-time ACT loop and the micro-batching inference thread."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from runtime_fixtures import CountingEngine, row_inputs, zero_carry

from dualhrq.config import ActConfig, ServeConfig
from dualhrq.contract import OUTPUT_NAMES
from dualhrq.contract import zero_carry as graph_carry
from dualhrq.errors import ConfigurationError
from dualhrq.export.engines import OnnxEngine, TorchEngine
from dualhrq.export.segment import example_feeds
from dualhrq.export.tensorrt_engine import TensorRTEngine
from dualhrq.model import HRM
from dualhrq.runtime.act import run_act
from dualhrq.runtime.batcher import Batcher, Expired, Overloaded


def _rows(wants: list[float]) -> dict[str, np.ndarray]:
    parts = [row_inputs(1, w, instrument=i) for i, w in enumerate(wants)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_act_stops_each_row_when_q_halt_wins_after_the_minimum():
    engine = CountingEngine()
    res = run_act(engine, _rows([1, 2, 9]), zero_carry(3), ActConfig(min_segments=1, max_segments=4))
    assert res.segments.tolist() == [1, 2, 4]
    assert res.halted_by_q.tolist() == [True, True, False]  # the third hit the maximum
    # Each row's heads come from the segment it stopped on, and halted rows left the batch.
    assert res.outputs["quantity"].tolist() == [1, 2, 4]
    assert engine.calls == [3, 2, 1, 1]


def test_act_runs_at_least_the_minimum_even_when_q_says_halt():
    res = run_act(CountingEngine(), _rows([1, 1]), zero_carry(2), ActConfig(min_segments=3, max_segments=4))
    assert res.segments.tolist() == [3, 3]
    assert res.halted_by_q.all()


def test_fixed_segments_runs_exactly_that_many_whatever_q_says():
    engine = CountingEngine()
    res = run_act(engine, _rows([1, 9]), zero_carry(2), ActConfig(min_segments=1, max_segments=4, fixed_segments=2))
    assert res.segments.tolist() == [2, 2]
    assert not res.halted_by_q.any()
    assert engine.calls == [2, 2]


@pytest.fixture(scope="module")
def tiny_engine(tiny_config):
    torch.manual_seed(0)
    return TorchEngine(HRM(tiny_config.model))


def _model_feeds(cfg, b, seed=0):
    """The non-carry graph inputs of b random rows."""
    feeds = example_feeds(cfg.model, b, seed=seed)
    del feeds["z_H"], feeds["z_L"]
    return feeds


def _carry(cfg, b):
    return graph_carry(cfg.model, b)


def test_torch_engine_returns_every_graph_output_with_the_batch_first(tiny_config, tiny_engine):
    feeds = example_feeds(tiny_config.model, 3)
    out = tiny_engine.run(feeds)
    assert set(out) == set(OUTPUT_NAMES)
    assert out["policy_logits"].shape == (3, 5) and out["q_logits"].shape == (3, 2)
    assert out["z_H_out"].shape == feeds["z_H"].shape
    np.testing.assert_allclose(out["regime_probs"].sum(1), 1.0, rtol=1e-5)


def test_batched_act_gives_each_row_what_it_gets_alone(tiny_config, tiny_engine):
    """Rows leave the batch at different segments; the carry of those still running must stay theirs."""
    act = ActConfig(min_segments=1, max_segments=3)
    feeds = _model_feeds(tiny_config, 4, seed=3)
    together = run_act(tiny_engine, feeds, _carry(tiny_config, 4), act)
    for i in range(4):
        alone = run_act(tiny_engine, {k: v[i:i + 1] for k, v in feeds.items()}, _carry(tiny_config, 1), act)
        assert alone.segments[0] == together.segments[i]
        for k, v in alone.outputs.items():
            np.testing.assert_allclose(v[0], together.outputs[k][i], rtol=1e-4, atol=1e-5)


def _batcher(engine, upstream=lambda: 0, **serve):
    return Batcher(engine, ActConfig(min_segments=1, max_segments=4), ServeConfig(**serve), zero_carry,
                   upstream=upstream)


def test_batcher_answers_every_row_with_its_own_result():
    engine = CountingEngine(delay_s=0.002)
    batcher = _batcher(engine, max_batch=4, max_wait_us=2000, upstream=lambda: 1).start()

    async def go():
        futs = [batcher.submit(row_inputs(1, want_segments=1 + i % 3, instrument=i)) for i in range(20)]
        return await asyncio.gather(*futs)

    try:
        results = asyncio.run(go())
    finally:
        batcher.stop()
    assert [int(r.outputs["policy_logits"][0]) for r in results] == list(range(20))
    assert [r.segments for r in results] == [1 + i % 3 for i in range(20)]
    assert max(r.batch_size for r in results) > 1  # rows were batched
    assert max(engine.calls) <= 4


def test_batcher_refuses_at_once_when_the_queue_is_full():
    engine = CountingEngine(delay_s=0.2)
    batcher = _batcher(engine, max_batch=1, queue_max=2).start()

    async def go():
        first = batcher.submit(row_inputs())
        while batcher.depth:  # until the thread has taken the first row (it is busy with it for 0.2 s)
            await asyncio.sleep(0.005)
        queued = [batcher.submit(row_inputs()) for _ in range(2)]
        with pytest.raises(Overloaded):
            batcher.submit(row_inputs())
        await asyncio.gather(first, *queued)

    try:
        asyncio.run(go())
    finally:
        batcher.stop()


def test_batcher_skips_rows_whose_deadline_passed_while_queued():
    import time

    engine = CountingEngine(delay_s=0.1)
    batcher = _batcher(engine, max_batch=1).start()

    async def go():
        first = batcher.submit(row_inputs())
        late = batcher.submit(row_inputs(), deadline=time.perf_counter() + 0.01)
        await first
        with pytest.raises(Expired):
            await late

    try:
        asyncio.run(go())
    finally:
        batcher.stop()
    assert engine.calls == [1]


def test_batcher_turns_an_engine_failure_into_an_error_for_each_row():
    class Broken(CountingEngine):
        def run(self, feeds):
            raise RuntimeError("device lost")

    batcher = _batcher(Broken()).start()

    async def go():
        return await asyncio.gather(batcher.submit(row_inputs()), return_exceptions=True)

    try:
        (err,) = asyncio.run(go())
    finally:
        batcher.stop()
    assert "device lost" in str(err)


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory, tiny_engine):
    from dualhrq.export.segment import export_segment

    return export_segment(tiny_engine.graph.model, tmp_path_factory.mktemp("graph") / "segment.onnx")


def test_onnx_engine_matches_torch_on_first_and_bound_calls(tiny_config, tiny_engine, tiny_graph):
    """The first call at a batch size runs plainly, later ones through I/O binding into reused buffers."""
    onnx_engine = OnnxEngine(tiny_graph, threads=1)
    feeds = _model_feeds(tiny_config, 2, seed=5)
    feeds["z_H"], feeds["z_L"] = _carry(tiny_config, 2)
    want = tiny_engine.run(feeds)
    for _ in range(3):
        got = onnx_engine.run(feeds)
        for k in OUTPUT_NAMES:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def test_onnx_engine_bindings_kept_between_calls_read_new_arrays_and_arrays_changed_in_place(
        tiny_config, tiny_engine, tiny_graph):
    """Inputs are bound again only when another array is fed: a new request's arrays, or the same arrays
    rewritten in place, must both be what the next call reads."""
    onnx_engine = OnnxEngine(tiny_graph, threads=1)
    first, second = (_model_feeds(tiny_config, 1, seed=s) for s in (11, 12))
    for feeds in (first, second):
        feeds["z_H"], feeds["z_L"] = _carry(tiny_config, 1)
    for _ in range(3):  # the first call runs plainly; then each output set's binding is kept
        onnx_engine.run(first)
    for feeds in (second, first):  # another request's arrays, then the first's again
        got, want = onnx_engine.run(feeds), tiny_engine.run(feeds)
        for k in OUTPUT_NAMES:  # (not q_logits alone: an untrained Q head answers the same for any input)
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
    for name, value in second.items():  # the same array objects, given the second request's values
        first[name][...] = value
    for _ in range(2):  # through both output sets' bindings
        got = onnx_engine.run(first)
        for k in OUTPUT_NAMES:
            np.testing.assert_allclose(got[k], tiny_engine.run(second)[k], rtol=1e-4, atol=1e-4)


def test_onnx_act_with_the_carry_fed_back_matches_torch(tiny_config, tiny_engine, tiny_graph):
    act = ActConfig(min_segments=3, max_segments=3)  # three segments: the carry goes round twice
    feeds = _model_feeds(tiny_config, 3, seed=7)
    onnx_engine = OnnxEngine(tiny_graph, threads=1)
    for _ in range(2):  # the second time every call is a bound one
        got = run_act(onnx_engine, feeds, _carry(tiny_config, 3), act)
    want = run_act(tiny_engine, feeds, _carry(tiny_config, 3), act)
    for k, v in want.outputs.items():
        np.testing.assert_allclose(got.outputs[k], v, rtol=1e-4, atol=1e-4)


def test_an_unavailable_backend_is_a_clear_configuration_error(tiny_graph):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ConfigurationError, match="CUDAExecutionProvider"):
        OnnxEngine(tiny_graph, backend="onnx-cuda")


def test_tensorrt_without_tensorrt_is_a_clear_configuration_error(tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigurationError, match="tensorrt"):
        TensorRTEngine(tmp_path / "engine.plan", None)


def test_the_serving_path_imports_without_torch():
    """Serving must start without PyTorch: the graph contract, bundle, ONNX engine, ACT loop and the id
    vocabularies never import it."""
    import subprocess
    import sys

    code = ("import sys, dualhrq.export.engines, dualhrq.runtime.act, dualhrq.runtime.host, dualhrq.contract, "
            "dualhrq.export.bundle, dualhrq.model.vocab; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
