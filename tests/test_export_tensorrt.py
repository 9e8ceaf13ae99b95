"""TensorRT: the real build where TensorRT and a GPU exist (skipped here: TensorRT cannot be installed on these
machines), the API sequence against a stand-in module, and the bundle written without TensorRT."""

from __future__ import annotations

import sys
import types

import onnx
import pytest
import torch
from subcommand import run_subcommand

from dualhrq.contract import INPUT_NAMES
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.bundle import load_bundle
from dualhrq.export.commands import register
from dualhrq.export.inputs import ParityFeeds
from dualhrq.export.pipeline import ExportOptions, export_bundle
from dualhrq.export.segment import example_feeds, export_segment
from dualhrq.export.tensorrt_build import build_engine, tensorrt_unavailable_reason
from dualhrq.model import HRM
from dualhrq.train.checkpoint import save_checkpoint

NO_TENSORRT = "TensorRT cannot be installed on these machines (no NVIDIA GPU); the TensorRT build is unverified here"


@pytest.fixture(scope="module")
def checkpoint(tiny_config, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("trt") / "ckpt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, HRM(tiny_config.model), tiny_config)
    return ckpt


def test_engine_builds_and_holds_its_parity_bound_on_a_gpu(checkpoint, tiny_config, tmp_path):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    if tensorrt_unavailable_reason():
        pytest.skip(tensorrt_unavailable_reason())
    feeds = ParityFeeds(example_feeds(tiny_config.model, 16), "synthetic")
    result = export_bundle(checkpoint, tmp_path / "b", ExportOptions(tensorrt=True, max_batch=4,
                                                                     timing_cache=tmp_path / "timing.cache"), feeds)
    trt = result.manifest.tensorrt
    assert trt.built and trt.passed, trt
    assert load_bundle(result.bundle).tensorrt_plan_path().is_file() and (tmp_path / "timing.cache").is_file()


def test_without_tensorrt_export_says_why_and_writes_the_rest(checkpoint, tmp_path, capsys):
    if tensorrt_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: the engine is built instead")
    assert run_subcommand(register, "export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "b"),
                          "--tensorrt", "--parity-samples", "8", "--carry-segments", "1") == 0
    out = capsys.readouterr().out
    assert "TensorRT engine not built" in out and "the rest of the bundle is written" in out
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.tensorrt.built is False
    assert "tensorrt" in bundle.manifest.tensorrt.reason and not bundle.tensorrt_plan_path().exists()
    assert bundle.precisions == ("fp32",) and "held-out" in bundle.manifest.parity_inputs.source


class _FakeTensorRT:
    """Just enough of the TensorRT 10/11 Python API to drive build_engine and record what it asked for. It has no
    BuilderFlag at all (TensorRT 11 removed the weakly typed precision flags), so a build that sets one fails."""

    def __init__(self, graph: str, parse_ok: bool = True, version: str = "10.3.0", strongly_typed_flag: bool = True):
        self.graph, self.parse_ok, self.version, self.strongly_typed_flag = graph, parse_ok, version, strongly_typed_flag
        self.calls: dict[str, object] = {"profiles": {}}

    def module(self) -> types.ModuleType:
        fake, calls = self, self.calls
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(
            **({"STRONGLY_TYPED": 1} if self.strongly_typed_flag else {}))
        trt.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})

        class Tensor:
            def __init__(self, value: onnx.ValueInfoProto) -> None:
                self.name = value.name
                self.shape = tuple(d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim)

        class Network:
            inputs: list[Tensor] = []
            num_inputs = property(lambda self: len(self.inputs))

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

        class Parser:
            num_errors = property(lambda self: 0 if fake.parse_ok else 1)

            def __init__(self, network: Network, logger: object) -> None:
                self.network = network

            def parse_from_file(self, path: str) -> bool:
                self.network.inputs = [Tensor(v) for v in onnx.load(path, load_external_data=False).graph.input]
                return fake.parse_ok

            def get_error(self, i: int) -> str:
                return "In node 7 (Einsum): UNSUPPORTED_NODE"

        class Cache:
            def __init__(self, data: bytes) -> None:
                self.data = data

            def serialize(self) -> bytes:
                return self.data + b"+timings"

        class Config:
            progress_monitor = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                calls["workspace"] = (pool, size)

            def add_optimization_profile(self, profile: object) -> None:
                calls["profile_added"] = True

            def create_timing_cache(self, data: bytes) -> Cache:
                calls["cache_read"] = data
                return Cache(data)

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                self.cache = cache

            def get_timing_cache(self) -> Cache:
                return self.cache

        class Profile:
            def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
                calls["profiles"][name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                calls["network_flags"] = flags
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                monitor = config.progress_monitor
                monitor.phase_start("Building engine", None, 4)
                for step in range(4):
                    assert monitor.step_complete("Building engine", step)
                monitor.phase_finish("Building engine")
                return b"PLAN"

        trt.Builder, trt.OnnxParser = Builder, Parser
        return trt


@pytest.fixture
def fake_trt(tiny_config, tmp_path, monkeypatch):
    torch.manual_seed(0)
    graph = export_segment(HRM(tiny_config.model), tmp_path / "segment.onnx")
    fake = _FakeTensorRT(str(graph))
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return fake


def test_build_engine_drives_the_tensorrt_api_as_documented(fake_trt, tiny_config, tmp_path):
    (tmp_path / "timing.cache").write_bytes(b"old")
    lines: list[str] = []
    plan = build_engine(fake_trt.graph, tmp_path / "engine.plan", max_batch=6, workspace_mb=512,
                        timing_cache=tmp_path / "timing.cache", progress=lines.append)
    calls = fake_trt.calls
    assert plan.read_bytes() == b"PLAN"
    assert calls["network_flags"] == 1 << 1  # strongly typed: the precision is the graph's, no builder flag
    assert calls["workspace"] == ("workspace", 512 << 20)
    m = tiny_config.model
    assert set(calls["profiles"]) == set(INPUT_NAMES) and calls["profile_added"]
    assert calls["profiles"]["h_tokens"] == ((1, m.coarse_len, m.coarse_features), (1, m.coarse_len, m.coarse_features),
                                             (6, m.coarse_len, m.coarse_features))
    assert calls["profiles"]["instrument_id"] == ((1,), (1,), (6,))
    assert calls["cache_read"] == b"old" and (tmp_path / "timing.cache").read_bytes() == b"old+timings"
    assert "TensorRT: Building engine (4 steps)" in lines and "TensorRT: Building engine 100%" in lines


def test_build_engine_reports_the_parsers_errors(fake_trt, tmp_path):
    fake_trt.parse_ok = False
    with pytest.raises(ModelLoadError, match="parser rejected .*UNSUPPORTED_NODE"):
        build_engine(fake_trt.graph, tmp_path / "engine.plan", max_batch=2)
    assert not (tmp_path / "engine.plan").exists()


def test_a_tensorrt_11_without_the_strongly_typed_member_builds_with_no_flags(fake_trt, tmp_path):
    fake_trt.version, fake_trt.strongly_typed_flag = "11.4.0", False
    sys.modules["tensorrt"] = fake_trt.module()
    build_engine(fake_trt.graph, tmp_path / "engine.plan", max_batch=2)
    assert fake_trt.calls["network_flags"] == 0


@pytest.mark.parametrize("version", ["9.3.0", "12.0.1"])
def test_tensorrt_majors_other_than_10_and_11_are_refused_with_the_reason(fake_trt, tmp_path, version):
    sys.modules["tensorrt"].__version__ = version
    assert "10 or 11" in tensorrt_unavailable_reason()
    with pytest.raises(ConfigurationError, match=f"TensorRT {version}"):
        build_engine(fake_trt.graph, tmp_path / "engine.plan", max_batch=2)
