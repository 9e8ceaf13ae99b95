"""The install extras: a cpu or a gpu install never puts both ONNX Runtime packages in one environment (with both,
the CUDA and TensorRT providers vanish), and TensorRT is held to the majors the strongly typed build supports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(extra: str | None) -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    if extra:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return {canonicalize_name(r.name): r for r in reqs}


def test_the_gpu_install_has_onnxruntime_gpu_and_not_onnxruntime():
    names = _names("gpu")
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names


def test_the_cpu_install_has_onnxruntime_and_not_onnxruntime_gpu():
    names = _names("cpu")
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names


def test_the_dev_extra_adds_no_onnx_runtime_of_its_own():
    # dev is installed beside either cpu or gpu, so it must not bring its own ONNX Runtime
    dev = {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["dev"]}
    assert not dev & {"onnxruntime", "onnxruntime-gpu", "dualhrq"}


def test_tensorrt_is_held_to_the_majors_the_build_supports():
    spec = _names("gpu")["tensorrt"].specifier
    assert all(v in spec for v in ("10.0.1", "10.13.3", "11.4.0"))
    assert not any(v in spec for v in ("8.6.1", "9.3.0", "12.0.0"))


def test_the_readme_documents_one_install_command_for_each():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"pip install [^\n`]*dualhrq\[([a-z,]+)\]", readme)
    assert {"cpu", "gpu"} <= {c for extras in commands for c in extras.split(",")}
    assert not any({"cpu", "gpu"} <= set(extras.split(",")) for extras in commands)
