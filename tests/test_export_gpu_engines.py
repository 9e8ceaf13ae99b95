"""The GPU engines' logic on a CPU: the device loop (ping-pong carry, buffers per batch size, CUDA graph capture
per batch size and parity, only q-logits each segment), torch-cuda on CPU torch, and the native TensorRT and ONNX
Runtime CUDA engines through stand-ins that record their API calls and compute with PyTorch or ONNX Runtime's CPU
provider; parity of every engine through the one Engine interface."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from dualhrq.config import ActConfig
from dualhrq.contract import INPUT_NAMES, OUTPUT_NAMES, ort_session
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.engine_parity import engine_parity
from dualhrq.export.engines import Engine, OnnxEngine, TorchEngine
from dualhrq.export.gpu_target import GpuTarget
from dualhrq.export.segment import SegmentGraph, example_feeds, export_segment, output_shapes
from dualhrq.export.tensorrt_engine import TensorRTEngine
from dualhrq.export.torch_cuda import TorchCudaEngine
from dualhrq.model import HRM
from dualhrq.runtime.act import run_act

CARRY_IN = ("z_H", "z_L")


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return HRM(tiny_config.model).eval()


@pytest.fixture(scope="module")
def feeds(tiny_config):
    f = example_feeds(tiny_config.model, 7, seed=3)
    f["pattern_mask"][1::2] = 0.0
    return f


@pytest.fixture(scope="module")
def graph(model, tmp_path_factory):
    return export_segment(model, tmp_path_factory.mktemp("gpu") / "segment_fp32.onnx")


def _inputs(feeds, rows=slice(None)):
    return {k: v[rows] for k, v in feeds.items() if k not in CARRY_IN}


def _carry(feeds, rows=slice(None)):
    return feeds["z_H"][rows], feeds["z_L"][rows]


def _drive(engine: Engine, feeds, keeps: list[np.ndarray | None]) -> list[dict[str, np.ndarray]]:
    """Step a SegmentLoop, dropping rows as `keeps` says after each step; what came back each step."""
    loop = engine.segments(_inputs(feeds), _carry(feeds))
    seen = []
    for keep in keeps:
        q = loop.step().copy()
        rows = np.ones(loop.batch, dtype=bool)
        seen.append({"q_logits": q, **loop.heads(rows), **loop.carry()})
        if keep is not None:
            loop.keep(keep)
    return seen


# ---------------------------------------------------------------- torch-cuda on CPU torch and the device loop


def test_torch_cuda_on_cpu_runs_one_segment_as_the_eager_engine(model, feeds):
    ref = TorchEngine(model, max_batch=8).run(feeds)
    got = TorchCudaEngine(model, max_batch=8).run(feeds)
    assert set(got) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(got[name], ref[name], atol=1e-5, err_msg=name)


def test_the_device_loop_keeps_the_carry_and_drops_halted_rows_as_the_host_loop_does(model, feeds):
    keeps = [None, np.array([1, 0, 1, 1, 0, 1, 1], bool), np.array([0, 1, 1, 1, 1], bool), None]
    host = _drive(TorchEngine(model, max_batch=8), feeds, keeps)
    device = _drive(TorchCudaEngine(model, max_batch=8), feeds, keeps)
    for h, d in zip(host, device):
        assert set(h) == set(d)
        for name in h:
            np.testing.assert_allclose(d[name], h[name], atol=1e-5, err_msg=name)


def test_act_through_torch_cuda_gives_what_the_eager_engine_gives(model, feeds):
    act = ActConfig(min_segments=1, max_segments=4)
    ref = run_act(TorchEngine(model), _inputs(feeds), _carry(feeds), act)
    got = run_act(TorchCudaEngine(model), _inputs(feeds), _carry(feeds), act)
    assert got.segments.tolist() == ref.segments.tolist()
    for name in ref.outputs:
        np.testing.assert_allclose(got.outputs[name], ref.outputs[name], atol=1e-5, err_msg=name)


def test_torch_cuda_refuses_int8_and_cpu_fp16(model):
    with pytest.raises(ConfigurationError, match="int8"):
        TorchCudaEngine(model, "int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="fp16"):
            TorchCudaEngine(model, "fp16")


class _FakeGraphs:
    """torch.cuda.CUDAGraph and torch.cuda.graph: a capture records the launches made under it instead of
    running them; replay runs what was recorded."""

    def __init__(self) -> None:
        self.capturing = None
        self.replays = 0
        fakes = self

        class Graph:
            def __init__(self) -> None:
                self.ops = []

            def replay(self) -> None:
                fakes.replays += 1
                for op in self.ops:
                    op()

        self.Graph = Graph

    @contextmanager
    def graph(self, g, pool=None, stream=None, capture_error_mode="global"):
        self.capturing = g
        try:
            yield
        finally:
            self.capturing = None

    def wrap(self, launch):
        self.direct = 0

        def recorded(bufs, parity):
            if self.capturing is not None:
                self.capturing.ops.append(lambda: launch(bufs, parity))
            else:
                self.direct += 1
                launch(bufs, parity)
        return recorded


def test_each_batch_size_is_captured_once_per_parity_and_replayed_after(model, feeds, monkeypatch):
    fakes = _FakeGraphs()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", fakes.Graph)
    monkeypatch.setattr(torch.cuda, "graph", fakes.graph)
    engine = TorchCudaEngine(model, max_batch=8)
    segs = engine.device
    segs.cuda_graphs = True
    segs.stream = types.SimpleNamespace(synchronize=lambda: None)
    segs._launch = fakes.wrap(segs._launch)
    keeps = [None, np.array([1, 0, 1, 1, 0, 1, 1], bool), None]
    first = _drive(engine, feeds, keeps)
    warm_direct = fakes.direct  # warm-up launches before each capture
    addresses = {b: [t.data_ptr() for t in (*bufs.feeds.values(), *bufs.carry[0].values(), *bufs.carry[1].values(),
                                            *bufs.heads.values())] for b, bufs in segs._buffers.items()}
    again = _drive(engine, feeds, keeps)
    assert segs.captured == [(7, 0), (7, 1), (5, 0), (5, 1)]  # once each, never again
    assert fakes.direct == warm_direct  # after capture every segment is a replay
    assert fakes.replays == 2 * len(keeps)
    assert addresses == {b: [t.data_ptr() for t in (*bufs.feeds.values(), *bufs.carry[0].values(),
                                                    *bufs.carry[1].values(), *bufs.heads.values())]
                         for b, bufs in segs._buffers.items()}
    host = _drive(TorchEngine(model), feeds, keeps)
    for a, b, h in zip(first, again, host):
        for name in h:
            np.testing.assert_allclose(a[name], h[name], atol=1e-5, err_msg=name)
            np.testing.assert_allclose(b[name], h[name], atol=1e-5, err_msg=name)


def test_a_segment_that_cannot_be_captured_runs_without_graphs(model, feeds, monkeypatch):
    fakes = _FakeGraphs()

    @contextmanager
    def refuse(g, **kw):
        raise RuntimeError("operation not permitted when stream is capturing")
        yield
    monkeypatch.setattr(torch.cuda, "CUDAGraph", fakes.Graph)
    monkeypatch.setattr(torch.cuda, "graph", refuse)
    engine = TorchCudaEngine(model, max_batch=8)
    segs = engine.device
    segs.cuda_graphs = True
    segs.stream = types.SimpleNamespace(synchronize=lambda: None)
    got = _drive(engine, feeds, [None, None])
    assert not segs.cuda_graphs and "not permitted" in segs.note and segs.captured == []
    for g, h in zip(got, _drive(TorchEngine(model), feeds, [None, None])):
        for name in h:
            np.testing.assert_allclose(g[name], h[name], atol=1e-5, err_msg=name)


def test_only_q_logits_come_back_each_segment(model, feeds):
    engine = TorchCudaEngine(model, max_batch=8)
    copies: list[str] = []
    loop = engine.segments(_inputs(feeds), _carry(feeds))
    bufs = engine.device._buffers[7]
    hosts = [("q", bufs.host_q)] + [(f"heads.{n}", t) for n, t in bufs.host_heads.items()] + [
        (f"carry.{n}", t) for n, t in bufs.host_carry.items()]
    for name, host in hosts:
        host.copy_ = (lambda original, name: lambda *a, **k: (copies.append(name), original(*a, **k))[1])(
            host.copy_, name)
    for _ in range(3):
        loop.step()
    assert copies == ["q"] * 3
    loop.heads(np.ones(7, bool))
    assert sorted(copies[3:]) == sorted(f"heads.{n}" for n in OUTPUT_NAMES if n not in ("z_H_out", "z_L_out"))


# ---------------------------------------------------------------- parity through the one interface


def test_every_cpu_engine_holds_fp32_parity_through_the_one_interface(model, feeds, graph):
    for engine in (TorchEngine(model), TorchCudaEngine(model), OnnxEngine(graph, threads=1, max_batch=4)):
        result = engine_parity(model, engine, feeds, "fp32", segments=3)
        assert result.passed, (engine.name, result.failures)
        assert len(result.carry_max_abs_err) == 3 and result.halting_agreement == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_reduced_cpu_variants_go_through_the_same_interface(model, feeds, graph, precision):
    from dualhrq.cpu import has_vnni
    from dualhrq.export.precision import int8_schemes, to_fp16, to_int8

    out = graph.with_name(f"segment_{precision}.onnx")
    derived = to_fp16(graph, out) if precision == "fp16" else to_int8(graph, out, int8_schemes(has_vnni())[0])
    result = engine_parity(model, OnnxEngine(derived, threads=1, max_batch=4), feeds, precision, segments=2)
    assert result.precision == precision and len(result.halting_agreement) == 2
    assert result.segment.samples == len(feeds["h_tokens"]) and result.carry_max_abs_err[0] > 0
    exact = engine_parity(model, OnnxEngine(derived, threads=1, max_batch=4), feeds, precision, exact=True)
    assert not exact.passed  # held to fp32's bounds a reduced precision misses: the gate can fail


class _ForgetfulEngine(Engine):
    """Right on one segment from a zero carry, but ignores the carry it is given: only a multi-segment check
    can see it."""

    def __init__(self, model: HRM) -> None:
        self._inner, self.name, self.max_batch = TorchEngine(model), "forgetful", 8

    def run(self, feeds):
        return self._inner.run({**feeds, "z_H": np.zeros_like(feeds["z_H"]), "z_L": np.zeros_like(feeds["z_L"])})


def test_an_engine_that_drops_the_carry_fails_carry_parity(model, feeds):
    result = engine_parity(model, _ForgetfulEngine(model), feeds, "fp32", segments=3)
    assert result.segment.passed and not result.passed
    assert result.carry_failures and all(f.startswith(("segment 2", "segment 3")) for f in result.carry_failures)


# ---------------------------------------------------------------- native TensorRT through a stand-in


class _FakeTensorRT:
    """The TensorRT 10/11 runtime API the engine uses; execution computes with the PyTorch model on the tensors
    found at the bound addresses, so wrong bindings give wrong numbers."""

    def __init__(self, model: HRM, version: str = "10.13.0") -> None:
        self.model, self.version = SegmentGraph(model), version
        self.calls: list[tuple] = []
        self.tensors: dict[int, torch.Tensor] = {}  # data_ptr -> tensor, filled by the test

    def module(self, cfg) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        trt.nptype = lambda dtype: dtype
        rows = example_feeds(cfg, 1)
        shapes = {n: (-1, *rows[n].shape[1:]) for n in INPUT_NAMES}
        shapes.update({n: (-1, *s[1:]) for n, s in output_shapes(cfg).items()})
        dtypes = {n: rows[n].dtype for n in INPUT_NAMES} | {n: np.dtype(np.float32) for n in OUTPUT_NAMES}
        names = list(INPUT_NAMES + OUTPUT_NAMES)

        class Context:
            def __init__(self) -> None:
                self.addresses, self.shapes = {}, {}

            def set_optimization_profile_async(self, index, stream):
                fake.calls.append(("profile", index))
                return True

            def set_input_shape(self, name, shape):
                self.shapes[name] = shape
                return True

            def set_tensor_address(self, name, ptr):
                fake.calls.append(("address", id(self), name))
                self.addresses[name] = ptr
                return True

            def execute_async_v3(self, stream):
                fake.calls.append(("execute", id(self)))
                args = [fake.tensors[self.addresses[n]] for n in INPUT_NAMES]
                with torch.no_grad():
                    for name, value in zip(OUTPUT_NAMES, fake.model(*args)):
                        fake.tensors[self.addresses[name]].copy_(value)
                return True

        class Engine_:
            num_io_tensors = len(names)

            def get_tensor_name(self, i):
                return names[i]

            def get_tensor_shape(self, name):
                return shapes[name]

            def get_tensor_dtype(self, name):
                return dtypes[name]

            def create_execution_context(self):
                fake.calls.append(("context",))
                return Context()

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", data))
                return Engine_()

        trt.Runtime = Runtime
        return trt


H100 = GpuTarget("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")


@pytest.fixture
def fake_trt(model, tiny_config, monkeypatch, tmp_path):
    fake = _FakeTensorRT(model)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module(tiny_config.model))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("dualhrq.export.gpu_target.current_gpu", lambda device=0: (H100.gpu_name, "9.0"))
    (tmp_path / "engine.plan").write_bytes(b"PLAN")
    fake.plan = tmp_path / "engine.plan"
    return fake


def _cpu_tensorrt(fake, plan=None, recorded=H100, max_batch=8, **kw):
    engine = TensorRTEngine(plan or fake.plan, recorded, max_batch=max_batch, device="cpu", **kw)
    original = engine.device._prepare

    def prepare(bufs):  # let the stand-in find tensors by address, as the GPU would
        for t in (*bufs.feeds.values(), *bufs.carry[0].values(), *bufs.carry[1].values(), *bufs.heads.values()):
            fake.tensors[t.data_ptr()] = t
        original(bufs)
    engine.device._prepare = prepare
    return engine


def test_tensorrt_binds_each_batch_size_once_and_keeps_the_carry_on_the_device(fake_trt, model, feeds):
    engine = _cpu_tensorrt(fake_trt)
    keeps = [None, np.array([1, 0, 1, 1, 0, 1, 1], bool), None]
    got = _drive(engine, feeds, keeps)
    again = _drive(engine, feeds, keeps)
    host = _drive(TorchEngine(model), feeds, keeps)
    for a, b, h in zip(got, again, host):
        for name in h:
            np.testing.assert_allclose(a[name], h[name], atol=1e-5, err_msg=name)
            np.testing.assert_allclose(b[name], h[name], atol=1e-5, err_msg=name)
    contexts = [c for c in fake_trt.calls if c[0] == "context"]
    addresses = [c for c in fake_trt.calls if c[0] == "address"]
    assert len(contexts) == 4  # batch 7 and 5, one per parity, made once for both runs
    assert len(addresses) == 4 * len(INPUT_NAMES + OUTPUT_NAMES)  # every address set exactly once
    assert sum(c[0] == "execute" for c in fake_trt.calls) == 2 * len(keeps)
    assert engine_parity(model, engine, feeds, "fp32").passed


def test_a_plan_for_another_gpu_or_tensorrt_is_refused_before_deserialising(fake_trt):
    for recorded, what in ((GpuTarget("NVIDIA A100-SXM4-80GB", "8.0", "10.13.0"), "compute capability"),
                           (GpuTarget(H100.gpu_name, "9.0", "10.3.0"), "TensorRT version"),
                           (None, "records no GPU")):
        with pytest.raises(ModelLoadError, match=what):
            TensorRTEngine(fake_trt.plan, recorded, device="cpu")
    assert not [c for c in fake_trt.calls if c[0] == "deserialize"]


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "12.0.0"])
def test_tensorrt_majors_other_than_10_and_11_are_refused(fake_trt, version):
    sys.modules["tensorrt"].__version__ = version
    with pytest.raises(ConfigurationError, match=f"TensorRT {version} .*10 or 11"):
        TensorRTEngine(fake_trt.plan, H100, device="cpu")


def test_export_builds_checks_and_records_the_plan_for_this_gpu(fake_trt, model, feeds, tiny_config, tmp_path,
                                                                 monkeypatch):
    from dualhrq.config import ServeConfig
    from dualhrq.export import pipeline, tensorrt_engine
    from dualhrq.export.bundle import load_bundle
    from dualhrq.export.engines import make_engine
    from dualhrq.export.inputs import ParityFeeds
    from dualhrq.export.pipeline import ExportOptions, export_bundle
    from dualhrq.train.checkpoint import save_checkpoint

    built = {}

    def build(source, plan, max_batch, **kw):
        built["source"], built["max_batch"] = source.name, max_batch
        plan.write_bytes(b"PLAN")
        return plan
    monkeypatch.setattr(pipeline, "build_engine", build)
    monkeypatch.setattr(pipeline, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(tensorrt_engine, "TensorRTEngine",  # as the pipeline and make_engine make it, on the CPU
                        lambda plan, recorded, max_batch=8: _cpu_tensorrt(fake_trt, plan, recorded, max_batch))
    save_checkpoint(tmp_path / "ckpt", model, tiny_config)
    result = export_bundle(tmp_path / "ckpt", tmp_path / "b",
                           ExportOptions(tensorrt=True, fp16=True, max_batch=4, carry_segments=2, parity_samples=8),
                           ParityFeeds(feeds, "synthetic"))
    m = result.manifest
    trt = m.tensorrt
    fp16_written = m.precisions["fp16"].file is not None
    assert built == {"source": "segment_fp16.onnx" if fp16_written else "segment_fp32.onnx", "max_batch": 4}
    assert trt.built and trt.passed and trt.fp16 == fp16_written
    assert (trt.gpu_name, trt.compute_capability, trt.tensorrt_version) == (H100.gpu_name, "9.0", "10.13.0")
    assert trt.carry["passed"] and len(trt.carry["halting_agreement"]) == 2
    bundle = load_bundle(tmp_path / "b")
    assert make_engine(bundle, ServeConfig(backend="tensorrt", max_batch=4)).name == "tensorrt"
    monkeypatch.setattr("dualhrq.export.gpu_target.current_gpu", lambda device=0: ("NVIDIA A100-SXM4-80GB", "8.0"))
    with pytest.raises(ModelLoadError, match="A100.*compute capability"):
        make_engine(bundle, ServeConfig(backend="tensorrt", max_batch=4))


# ---------------------------------------------------------------- ONNX Runtime CUDA through a stand-in


class _FakeOrt:
    """onnxruntime-gpu's OrtValue / IOBinding / RunOptions, computing with a CPU session."""

    def __init__(self, cpu_session) -> None:
        self.cpu = cpu_session
        self.calls: list[tuple] = []
        fake = self

        class OrtValue:
            @staticmethod
            def ortvalue_from_shape_and_type(shape, dtype, device, device_id):
                fake.calls.append(("alloc", tuple(shape), device))
                return OrtValue(np.zeros(shape, dtype))

            def __init__(self, array):
                self.array = array

            def update_inplace(self, array):
                fake.calls.append(("upload", array.shape))
                self.array[...] = array

            def numpy(self):
                fake.calls.append(("download", self.name))
                return self.array.copy()

        class Binding:
            def __init__(self) -> None:
                self.inputs, self.outputs = {}, {}

            def bind_ortvalue_input(self, name, value):
                fake.calls.append(("bind", name))
                value.name = name
                self.inputs[name] = value

            def bind_ortvalue_output(self, name, value):
                fake.calls.append(("bind", name))
                value.name = name
                self.outputs[name] = value

            def clear_binding_inputs(self):
                pass

            clear_binding_outputs = clear_binding_inputs

        class RunOptions:
            def __init__(self) -> None:
                self.entries = {}

            def add_run_config_entry(self, key, value):
                self.entries[key] = value

        class Session:
            def io_binding(self):
                return Binding()

            def run_with_iobinding(self, binding, options):
                fake.calls.append(("run", options.entries.get("gpu_graph_id")))
                out = fake.cpu.run(list(binding.outputs), {n: v.array for n, v in binding.inputs.items()})
                for name, value in zip(binding.outputs, out):
                    binding.outputs[name].array[...] = value

        self.OrtValue, self.RunOptions, self.session = OrtValue, RunOptions, Session()


@pytest.fixture
def fake_ort(graph, monkeypatch):
    import onnxruntime

    fake = _FakeOrt(ort_session(graph, 1))
    monkeypatch.setattr(onnxruntime, "OrtValue", fake.OrtValue)
    monkeypatch.setattr(onnxruntime, "RunOptions", fake.RunOptions)

    def session(path, threads, spinning, backend, options):
        fake.options = options
        return fake.session
    monkeypatch.setattr("dualhrq.export.ort_cuda.ort_session", session)
    return fake


def _signature(tiny_config):
    from dualhrq.export.ort_cuda import signature_from

    rows = example_feeds(tiny_config.model, 1)
    inputs = [{"name": n, "dtype": rows[n].dtype.name, "shape": ["batch", *rows[n].shape[1:]]} for n in INPUT_NAMES]
    outputs = [{"name": n, "dtype": "float32", "shape": list(s)} for n, s in output_shapes(tiny_config.model).items()]
    return signature_from(inputs, outputs)


def test_ort_cuda_binds_device_values_once_and_copies_back_only_q_logits(fake_ort, graph, model, feeds, tiny_config):
    from dualhrq.export.ort_cuda import OrtCudaEngine

    engine = OrtCudaEngine(graph, "onnx-cuda", _signature(tiny_config), max_batch=8)
    assert fake_ort.options["CUDAExecutionProvider"]["enable_cuda_graph"] == "1"
    keeps = [None, np.array([1, 0, 1, 1, 0, 1, 1], bool), None]
    host = _drive(TorchEngine(model), feeds, keeps)
    for _ in range(2):
        fake_ort.calls.clear()
        loop = engine.segments(_inputs(feeds), _carry(feeds))
        for _ in range(2):
            loop.step()
        steps = [c for c in fake_ort.calls if c[0] == "download"]
        assert steps == [("download", "q_logits")] * 2
        for a, h in zip(_drive(engine, feeds, keeps), host):
            for name in h:
                np.testing.assert_allclose(a[name], h[name], atol=1e-5, err_msg=name)
    assert not [c for c in fake_ort.calls if c[0] in ("alloc", "bind")]  # all of it done on the first run
    ids = {c[1] for c in fake_ort.calls if c[0] == "run"}
    assert ids == {"13", "14", "9"}  # batch 7 parity 0 and 1, then batch 5 parity 0: a graph id each
    assert engine_parity(model, engine, feeds, "fp32").passed


def test_the_ort_tensorrt_provider_gets_fp16_a_cache_and_profiles_for_every_batch(fake_ort, graph, tiny_config,
                                                                                   tmp_path):
    from dualhrq.export.ort_cuda import OrtCudaEngine

    engine = OrtCudaEngine(graph, "onnx-tensorrt", _signature(tiny_config), max_batch=6, cache_dir=tmp_path / "c",
                           fp16=True)
    trt = fake_ort.options["TensorrtExecutionProvider"]
    m = tiny_config.model
    assert trt["trt_fp16_enable"] == "1" and trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "c") and (tmp_path / "c").is_dir()
    assert f"h_tokens:1x{m.coarse_len}x{m.coarse_features}" in trt["trt_profile_min_shapes"]
    assert f"h_tokens:6x{m.coarse_len}x{m.coarse_features}" in trt["trt_profile_max_shapes"]
    assert all(f"{n}:" in trt["trt_profile_max_shapes"] for n in INPUT_NAMES)
    assert "enable_cuda_graph" not in fake_ort.options["CUDAExecutionProvider"] and engine.note
