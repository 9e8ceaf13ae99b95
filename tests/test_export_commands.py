"""`dualhrq export`'s exit status (1: a check failed, the fp32 graph's or a requested variant's, the TensorRT
engine's included), the TensorRT engine held to the same carry check as every graph, and serving a precision a
bundle lacks."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from dualhrq import cli
from dualhrq.config import ServeConfig
from dualhrq.errors import EXIT_CHECK_FAILED, EXIT_OK, ModelLoadError
from dualhrq.export import parity as parity_module
from dualhrq.export import pipeline, tensorrt_engine
from dualhrq.export.bundle import load_bundle
from dualhrq.export.engines import Engine, TorchEngine, make_engine
from dualhrq.export.gpu_target import GpuTarget
from dualhrq.export.inputs import ParityFeeds
from dualhrq.export.pipeline import ExportOptions, export_bundle
from dualhrq.export.segment import example_feeds
from dualhrq.model import HRM
from dualhrq.train.checkpoint import save_checkpoint

WINDOWS = 12


@pytest.fixture(scope="module")
def model(tiny_config):
    torch.manual_seed(0)
    return HRM(tiny_config.model).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tiny_config, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("export_cli") / "ckpt"
    save_checkpoint(ckpt, model, tiny_config)
    return ckpt


def _feeds(cfg) -> ParityFeeds:
    return ParityFeeds(example_feeds(cfg.model, WINDOWS, seed=1), "synthetic (export command tests)")


@pytest.fixture
def synthetic_feeds(monkeypatch):
    """The command builds its parity inputs from real data; these tests need only a few windows."""
    monkeypatch.setattr(pipeline, "parity_feeds", lambda checkpoint, cfg, samples: _feeds(cfg))


class _ForgetfulEngine(Engine):
    """Right on one segment from a zero carry, but ignores the carry it is given: only the carry check sees it."""

    def __init__(self, model: HRM, max_batch: int) -> None:
        self._inner, self.name, self.max_batch = TorchEngine(model), "tensorrt", max_batch

    def run(self, feeds):
        return self._inner.run({**feeds, "z_H": np.zeros_like(feeds["z_H"]), "z_L": np.zeros_like(feeds["z_L"])})


@pytest.fixture
def stand_in_tensorrt(model, monkeypatch):
    """A TensorRT that 'builds' a plan file and runs it as `engines[0]` makes the engine (PyTorch on the CPU)."""
    engines = [lambda max_batch: TorchEngine(model, max_batch, name="tensorrt")]

    def build(source, plan, max_batch, **kw):
        plan.write_bytes(b"PLAN")
        return plan

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(pipeline, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(pipeline, "build_engine", build)
    monkeypatch.setattr("dualhrq.export.gpu_target.current_target",
                        lambda version: GpuTarget("NVIDIA H100 80GB HBM3", "9.0", version))
    monkeypatch.setattr(tensorrt_engine, "TensorRTEngine", lambda plan, target, max_batch=8: engines[0](max_batch))
    return engines


def _export(checkpoint, out, *flags: str) -> int:
    return cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--carry-segments", "2",
                     "--threads", "1", *flags])


def test_an_fp32_parity_miss_exits_1_naming_the_miss_and_writes_no_bundle(checkpoint, synthetic_feeds, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setattr(parity_module, "FP32_MAX_ABS_ERR", 0.0)  # no graph reproduces PyTorch this exactly
    assert _export(checkpoint, tmp_path / "b") == EXIT_CHECK_FAILED
    assert "error: the fp32 graph does not reproduce PyTorch" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_tensorrt_engine_that_misses_parity_is_dropped_and_exits_1(checkpoint, model, synthetic_feeds,
                                                                     stand_in_tensorrt, tmp_path, capsys):
    assert _export(checkpoint, tmp_path / "good", "--tensorrt", "--max-batch", "4") == EXIT_OK
    assert load_bundle(tmp_path / "good").tensorrt_plan_path().is_file()

    stand_in_tensorrt[0] = lambda max_batch: _ForgetfulEngine(model, max_batch)
    assert _export(checkpoint, tmp_path / "bad", "--tensorrt", "--max-batch", "4") == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "MISSED, not written" in out
    bundle = load_bundle(tmp_path / "bad")
    assert not bundle.tensorrt_plan_path().exists() and bundle.manifest.tensorrt.passed is False
    assert _export(checkpoint, tmp_path / "forced", "--tensorrt", "--max-batch", "4", "--force") == EXIT_OK


def test_the_tensorrt_engine_gets_the_carry_check_of_every_graph(checkpoint, tiny_config, stand_in_tensorrt,
                                                                 tmp_path):
    """One segment on every parity window; the carry over the --carry-samples windows, as for the graphs."""
    options = ExportOptions(tensorrt=True, max_batch=4, carry_segments=2, carry_samples=4, threads=1)
    m = export_bundle(checkpoint, tmp_path / "b", options, _feeds(tiny_config)).manifest
    assert m.tensorrt.passed and m.tensorrt.parity["samples"] == WINDOWS
    for carry in (m.tensorrt.carry, m.precisions["fp32"].carry):
        assert carry["segment"]["samples"] == 4 and carry["carry_segments"] == 2 and carry["passed"]


def test_serving_int8_from_a_bundle_without_an_int8_graph_names_the_missing_graph(checkpoint, tiny_config,
                                                                                   tmp_path):
    bundle = load_bundle(export_bundle(checkpoint, tmp_path / "b", ExportOptions(carry_segments=1, threads=1),
                                       _feeds(tiny_config)).bundle)
    assert bundle.precisions == ("fp32",)
    with pytest.raises(ModelLoadError, match="no int8 graph in this bundle .*--int8"):
        make_engine(bundle, ServeConfig(precision="int8"))
