"""The GPU and TensorRT a plan is built for: what the manifest records beside engine.plan, and the check that
refuses a plan on any other before TensorRT is asked to deserialise it.

A serialized TensorRT engine holds kernels chosen for one GPU model and one TensorRT build. Loaded elsewhere it
fails to deserialise at best, and at worst runs kernels tuned for another chip; either way the error must name
both sides, which TensorRT's own message does not.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dualhrq.errors import ConfigurationError, ModelLoadError

# Both build the strongly typed network dualhrq.export.tensorrt_build makes (11 removed the weakly typed
# precision flags; 10 accepts the strongly typed creation flag). Any other major is unchecked: refused.
SUPPORTED_TENSORRT_MAJORS = (10, 11)


class GpuTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"
    tensorrt_version: str

    def describe(self) -> str:
        return f"{self.gpu_name} (compute capability {self.compute_capability}), TensorRT {self.tensorrt_version}"


def tensorrt_version_problem(version: str) -> str | None:
    """None when this TensorRT version is one the build supports, else why not, in words."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        return f"TensorRT reports an unreadable version {version!r}"
    if major not in SUPPORTED_TENSORRT_MAJORS:
        wanted = " or ".join(str(m) for m in SUPPORTED_TENSORRT_MAJORS)
        return f"TensorRT {version} is installed; dualhrq builds and runs engines with TensorRT {wanted} only"
    return None


def import_tensorrt() -> Any:
    """The `tensorrt` module, refused with ConfigurationError when it is missing or of an unsupported major."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ConfigurationError(f"TensorRT: the `tensorrt` Python package does not import ({e}); install "
                                 "dualhrq[gpu] on a CUDA machine") from None
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        raise ConfigurationError(f"TensorRT: {problem}")
    return trt


def current_gpu(device: int = 0) -> tuple[str, str] | None:
    """(name, compute capability) of CUDA device `device` as PyTorch sees it, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return torch.cuda.get_device_name(device), f"{major}.{minor}"


def current_target(tensorrt_version: str, device: int = 0) -> GpuTarget:
    gpu = current_gpu(device)
    if gpu is None:
        raise ConfigurationError("TensorRT: no CUDA device (torch.cuda.is_available() is False)")
    return GpuTarget(gpu[0], gpu[1], tensorrt_version)


def check_plan_target(recorded: GpuTarget | None, here: GpuTarget, plan: str) -> None:
    """Refuse (ModelLoadError) a plan recorded for another GPU or TensorRT than `here`, or one that records
    none: it cannot be told apart from a plan built anywhere."""
    if recorded is None:
        raise ModelLoadError(f"{plan}: the manifest records no GPU or TensorRT version for this plan (exported by "
                             f"an older dualhrq); rebuild it here with `dualhrq export --tensorrt`")
    differ = [what for what, a, b in (("GPU", recorded.gpu_name, here.gpu_name),
                                      ("compute capability", recorded.compute_capability, here.compute_capability),
                                      ("TensorRT version", recorded.tensorrt_version, here.tensorrt_version))
              if a != b]
    if differ:
        raise ModelLoadError(f"{plan}: built for {recorded.describe()}, but this machine has {here.describe()} "
                             f"({', '.join(differ)} differ); a plan runs only where it was built: re-export with "
                             f"--tensorrt here, or serve the ONNX graph (onnx-cuda, onnx-tensorrt, torch-cuda)")
