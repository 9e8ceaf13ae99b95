"""`dualhrq gpu-check` on a CPU: the parity part runs for every engine here (torch-cuda on CPU torch included) on
the export's held-out windows; the GPU-only steps are skipped with doctor's reasons, or, when forced, hand the
commands a user would type to the CLI; an engine that misses parity fails the check."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml
from runtime_fixtures import synthetic_bundle

from dualhrq.bench import gpu_check
from dualhrq.export.engines import TorchEngine
from dualhrq.export.segment import example_feeds
from dualhrq.model import HRM


@pytest.fixture(scope="module")
def bundle(tiny_config, tmp_path_factory):
    return synthetic_bundle(tiny_config, tmp_path_factory.mktemp("gpucheck"))


def _args(bundle, out, *extra):
    p = argparse.ArgumentParser()
    gpu_check.add_gpu_check_args(p)
    return p.parse_args(["--bundle", str(bundle), "--out", str(out), "--runs", "2", "--batches", "1,2",
                         "--segments", "2", *extra])


class _Cli:
    """The CLI handed in: records each command and writes the JSON a bench would."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.configs: list[dict] = []  # serve configs given with --config, read while they exist

    def __call__(self, argv: list[str]) -> int:
        self.commands.append(argv)
        if "--config" in argv:
            self.configs.append(yaml.safe_load(open(argv[argv.index("--config") + 1]).read()))
        out = argv[argv.index("--json") + 1]
        body = ({"engines": {}} if argv[1] == "engine" else
                {"normal": {"latency_ms": {"p50": 0.4, "p95": 0.7}}})
        open(out, "w").write(json.dumps(body))
        return 0


def test_on_a_cpu_the_check_runs_parity_for_every_engine_and_skips_the_gpu_steps(bundle, tmp_path, capsys):
    cli = _Cli()
    assert gpu_check.run_gpu_check(_args(bundle, tmp_path / "r.json"), cli) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    if not torch.cuda.is_available():
        assert {"onnx-cpu/fp32", "torch/fp32", "torch-cuda/fp32"} <= set(report["parity"])
        assert all(p["passed"] for p in report["parity"].values())
        assert report["engine_latency"] == {} and cli.commands == []
        assert "onnx-cuda" in report["skipped"] and "held-out" in report["parity_inputs"]
        assert "skipped onnx-cuda" in capsys.readouterr().out


@pytest.fixture
def synthetic_windows(tiny_config, monkeypatch):
    """Skip building the held-out windows from the dataset (the first test does): the rest is what is tested."""
    monkeypatch.setattr(gpu_check, "_held_out", lambda b: (example_feeds(tiny_config.model, 6), "synthetic"))


def test_forced_onto_torch_cuda_it_times_each_batch_and_benches_that_backend(bundle, tmp_path, synthetic_windows):
    cli = _Cli()
    assert gpu_check.run_gpu_check(_args(bundle, tmp_path / "r.json", "--backends", "torch-cuda"), cli) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    timing = report["engine_latency"]["torch-cuda/fp32"]
    mode = "cuda_graphs" if torch.cuda.is_available() else "no_graphs"
    assert set(timing[mode]) == {"1", "2"} and timing[mode]["1"]["segment_ms"]["p50"] > 0
    assert [c[:2] for c in cli.commands] == [["bench", "engine"], ["bench", "latency"]]
    assert cli.configs[0]["serve"]["backend"] == "torch-cuda" and cli.configs[0]["base"].endswith("serve.yaml")
    assert report["bench_latency"]["torch-cuda/fp32"]["normal"]["latency_ms"]["p95"] == 0.7


def test_an_engine_that_misses_parity_fails_the_check(bundle, tmp_path, monkeypatch, synthetic_windows):
    class Forgetful(TorchEngine):
        def run(self, feeds):
            return super().run({**feeds, "z_H": np.zeros_like(feeds["z_H"]), "z_L": np.zeros_like(feeds["z_L"])})

    real = gpu_check._make

    def make(b, backend, precision, max_batch):
        if backend == "torch":
            model = HRM(b.config.model)
            model.load_state_dict(b.state_dict())
            return Forgetful(model)
        return real(b, backend, precision, max_batch)
    monkeypatch.setattr(gpu_check, "_make", make)
    assert gpu_check.run_gpu_check(_args(bundle, tmp_path / "r.json"), _Cli()) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert not report["parity"]["torch/fp32"]["passed"] and report["parity"]["onnx-cpu/fp32"]["passed"]


def test_a_checkpoint_is_exported_with_the_parity_windows_and_threads_asked_for(bundle, tmp_path,
                                                                                 synthetic_windows):
    import shutil

    class Exporting(_Cli):
        def __call__(self, argv):
            if argv[0] != "export":
                return super().__call__(argv)
            self.commands.append(argv)
            shutil.copytree(bundle, argv[argv.index("--out") + 1])
            return 0

    p = argparse.ArgumentParser()
    gpu_check.add_gpu_check_args(p)
    args = p.parse_args(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "r.json"), "--runs", "2",
                         "--batches", "1", "--segments", "2", "--backends", "torch", "--parity-samples", "64",
                         "--threads", "3"])
    cli = Exporting()
    assert gpu_check.run_gpu_check(args, cli) == 0
    export = cli.commands[0]
    assert export[:3] == ["export", "--checkpoint", str(tmp_path / "ckpt")]
    assert export[export.index("--parity-samples") + 1] == "64" and export[export.index("--threads") + 1] == "3"
    assert json.loads((tmp_path / "r.json").read_text())["parity"]["torch/fp32"]["passed"]


def test_a_gpu_step_that_breaks_is_reported_and_the_later_steps_still_run(bundle, tmp_path, synthetic_windows):
    class BrokenEngineBench(_Cli):
        def __call__(self, argv):
            if argv[:2] == ["bench", "engine"]:
                raise RuntimeError("Unsupported model IR version: 14")
            return super().__call__(argv)

    cli = BrokenEngineBench()
    assert gpu_check.run_gpu_check(_args(bundle, tmp_path / "r.json", "--backends", "torch-cuda"), cli) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert "IR version" in report["bench_engine"]["error"]
    assert report["bench_latency"]["torch-cuda/fp32"]["normal"]["latency_ms"]["p95"] == 0.7
    assert report["engine_latency"]["torch-cuda/fp32"]["act_segments"] >= 1
