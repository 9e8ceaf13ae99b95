"""`dualhrq doctor` reports this machine as its libraries see it, the ONNX Runtime package conflict, and what a
bundle can be served with here (a TensorRT plan only on the GPU it was built for)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import msgspec
import onnxruntime
import pytest
import torch
from runtime_fixtures import synthetic_bundle
from subcommand import run_subcommand

from dualhrq.bench import doctor
from dualhrq.bench.doctor import Gpu, diagnose
from dualhrq.export.bundle import load_bundle
from dualhrq.export.engines import BACKENDS
from dualhrq.export.manifest import MANIFEST
from dualhrq.persisted import write_record


def _cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_doctor_reports_this_machine_as_its_libraries_see_it():
    r = diagnose()
    assert set(r.backends) == set(BACKENDS)
    assert r.torch == str(torch.__version__) and r.torch_cuda == torch.version.cuda
    assert len(r.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert r.onnxruntime_providers == onnxruntime.get_available_providers()
    assert r.backends["onnx-cpu"].available and r.backends["torch"].available
    cuda = "CUDAExecutionProvider" in r.onnxruntime_providers and bool(r.gpus)
    assert r.backends["onnx-cuda"].available == cuda
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert r.tensorrt is None and not r.backends["tensorrt"].available
        assert "tensorrt" in r.backends["tensorrt"].why
    if Path("/proc/cpuinfo").is_file():
        flags = _cpuinfo_flags()
        assert set(r.cpu_flags) <= flags and ("avx2" in r.cpu_flags) == ("avx2" in flags)
    if not r.gpus:
        assert "CPU" in r.backends["torch-cuda"].why and "no CUDA device" in r.backends["torch-cuda"].why


def test_both_onnx_runtime_packages_installed_is_reported_as_a_problem(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "1.31.1" if name in ("onnxruntime", "onnxruntime-gpu") else real(name))
    r = diagnose()
    assert r.onnxruntime_packages == {"onnxruntime": "1.31.1", "onnxruntime-gpu": "1.31.1"}
    assert any("both onnxruntime and onnxruntime-gpu" in p for p in r.problems)


def test_tensorrt_11_with_an_onnx_runtime_too_old_for_it_is_reported(monkeypatch):
    monkeypatch.setattr(doctor, "_tensorrt", lambda: ("11.4.0", None))
    for ort_gpu, reported in (("1.26.2", True), ("1.27.0", False)):
        monkeypatch.setattr(doctor, "_onnxruntime", lambda v=ort_gpu: ({"onnxruntime-gpu": v}, ["CPUExecutionProvider"]))
        assert any("TensorRT 11" in p and ort_gpu in p for p in diagnose().problems) == reported


@pytest.fixture(scope="module")
def bundle(tiny_config, tmp_path_factory):
    return synthetic_bundle(tiny_config, tmp_path_factory.mktemp("doctor"))


def test_doctor_says_which_backends_and_precisions_serve_a_bundle_here(bundle, capsys):
    r = diagnose(bundle)
    assert r.backends["onnx-cpu"].precisions == ["fp32"] and r.backends["torch"].precisions == ["fp32"]
    assert not r.backends["tensorrt"].available and "no TensorRT plan" in r.backends["tensorrt"].why
    out = bundle.parent / "d.json"
    assert run_subcommand(doctor.register, "doctor", "--bundle", str(bundle), "--json", str(out)) == 0
    assert json.loads(out.read_text())["backends"]["onnx-cpu"]["precisions"] == ["fp32"]
    assert "onnx-cpu" in capsys.readouterr().out


def test_a_plan_built_on_another_gpu_is_not_offered(bundle, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    m = load_bundle(copy, verify=False).manifest
    trt = msgspec.structs.replace(m.tensorrt, built=True, file="engine.plan", fp16=True, tensorrt_version="10.13.0",
                                  gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    write_record(copy / MANIFEST, msgspec.structs.replace(m, tensorrt=trt))
    monkeypatch.setattr(doctor, "_torch", lambda: ("2.13.0", "12.8", [Gpu("NVIDIA H100 80GB HBM3", "9.0", 79.6)]))
    monkeypatch.setattr(doctor, "_tensorrt", lambda: ("10.13.0", None))
    r = diagnose(copy)
    assert r.backends["tensorrt"].precisions == [] and "A100" in r.backends["tensorrt"].why
    assert r.backends["torch-cuda"].precisions == ["fp32", "fp16"]


@pytest.mark.parametrize("damage", ["truncated graph", "edited manifest"])
def test_a_bundle_that_fails_its_hash_check_is_refused_not_listed_as_servable(bundle, tmp_path, damage, capsys):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    if damage == "truncated graph":
        graph = copy / "segment_fp32.onnx"
        graph.write_bytes(graph.read_bytes()[:100])
    else:
        m = load_bundle(copy, verify=False).manifest
        files = {**m.files, "weights.safetensors": msgspec.structs.replace(m.files["weights.safetensors"],
                                                                            sha256="0" * 64)}
        write_record(copy / MANIFEST, msgspec.structs.replace(m, files=files))
    assert run_subcommand(doctor.register, "doctor", "--bundle", str(copy)) == 1
    out = capsys.readouterr().out
    assert "bundle refused:" in out and "SHA-256 does not match the manifest" in out
    assert not any(b.available or b.precisions for b in diagnose(copy).backends.values())


def test_doctor_help_names_the_exit_statuses_it_gives(tmp_path, capsys):
    from dualhrq.cli import main

    assert main(["doctor", "--bundle", str(tmp_path / "none")]) == 2
    assert "not a bundle directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Always exit status 0" not in text
    assert "1 when the --bundle fails its hash check" in text and "2 when --bundle is not a bundle" in text
