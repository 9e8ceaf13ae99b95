"""`dualhrq doctor`: what this machine offers for inference (CPU flags, GPU, CUDA, TensorRT, ONNX Runtime packages
and providers) and, for a bundle, which backends and precisions it can be served with here.

Everything is probed, nothing assumed: a backend is "available" only when what it needs imports and reports the
device, and each one that is not says why in words a user can act on.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import msgspec

from dualhrq.bench.machine import cpu
from dualhrq.bench.report import made_parent, output_file

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
ORT_FOR_TENSORRT_11 = (1, 27)  # the first ONNX Runtime whose TensorRT provider builds with TensorRT 11
GRAPH_PRECISIONS = {"onnx-cpu": ("fp32", "fp16", "int8"), "onnx-cuda": ("fp32", "fp16"),
                    "onnx-tensorrt": ("fp32", "fp16")}


class Gpu(msgspec.Struct, frozen=True):
    name: str
    compute_capability: str
    memory_gib: float


class Backend(msgspec.Struct, frozen=True):
    available: bool
    why: str  # what it runs on, or why it cannot run here
    precisions: list[str] | None = None  # with a bundle: what it can serve of it here


class Report(msgspec.Struct, frozen=True):
    cpu: str
    cores: int
    cpu_flags: list[str]
    gpus: list[Gpu]
    torch: str | None
    torch_cuda: str | None  # the CUDA PyTorch was built with; None: a CPU build
    tensorrt: str | None
    tensorrt_problem: str | None
    onnxruntime_packages: dict[str, str]  # installed distribution -> version
    onnxruntime_providers: list[str]
    problems: list[str]
    backends: dict[str, Backend]
    bundle: str | None = None
    bundle_problems: list[str] = []  # the bundle's files against its manifest's hashes: any is no backend's to serve


def _torch() -> tuple[str | None, str | None, list[Gpu]]:
    try:
        import torch
    except ImportError:
        return None, None, []
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(Gpu(props.name, f"{props.major}.{props.minor}", round(props.total_memory / 2**30, 1)))
    return str(torch.__version__), torch.version.cuda, gpus


def _tensorrt() -> tuple[str | None, str | None]:
    from dualhrq.export.gpu_target import tensorrt_version_problem

    try:
        import tensorrt as trt
    except ImportError as e:
        return None, f"the `tensorrt` Python package does not import ({e}); install dualhrq[gpu]"
    return str(trt.__version__), tensorrt_version_problem(trt.__version__)


def _onnxruntime() -> tuple[dict[str, str], list[str]]:
    packages = {}
    for name in ORT_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort
    except ImportError:
        return packages, []
    return packages, list(ort.get_available_providers())


def diagnose(bundle: str | Path | None = None) -> Report:
    """Probe this machine, and with `bundle` (a bundle directory) what of it can be served here."""
    model, flags, cores = cpu()
    torch_version, torch_cuda, gpus = _torch()
    trt_version, trt_problem = _tensorrt()
    packages, providers = _onnxruntime()
    problems = []
    if len(packages) > 1:
        problems.append("both onnxruntime and onnxruntime-gpu are installed: they share the `onnxruntime` module and "
                        "the CUDA provider can vanish; `pip uninstall onnxruntime onnxruntime-gpu`, then install "
                        "exactly one (dualhrq[cpu] or dualhrq[gpu])")
    if not packages:
        problems.append("no ONNX Runtime is installed: install dualhrq[cpu] or dualhrq[gpu]")
    ort_gpu = packages.get("onnxruntime-gpu")
    if trt_version and trt_version.split(".")[0] == "11" and ort_gpu and _older(ort_gpu, ORT_FOR_TENSORRT_11):
        problems.append(f"TensorRT {trt_version} with onnxruntime-gpu {ort_gpu}: ONNX Runtime's TensorRT provider "
                        f"supports TensorRT 11 from {'.'.join(map(str, ORT_FOR_TENSORRT_11))} on; onnx-tensorrt "
                        "will fail (the native tensorrt backend is unaffected)")
    if "onnxruntime-gpu" in packages and not gpus:
        problems.append("onnxruntime-gpu is installed but no CUDA device is visible")
    gpu = f"{gpus[0].name} (compute capability {gpus[0].compute_capability})" if gpus else None
    backends = {
        "onnx-cpu": Backend("CPUExecutionProvider" in providers,
                            "ONNX Runtime CPU" if "CPUExecutionProvider" in providers else "ONNX Runtime is missing"),
        "onnx-cuda": _provider("CUDAExecutionProvider", providers, gpu),
        "onnx-tensorrt": _provider("TensorrtExecutionProvider", providers, gpu),
        "tensorrt": Backend(trt_version is not None and trt_problem is None and gpu is not None,
                            trt_problem or (f"TensorRT {trt_version} on {gpu}" if gpu else "no CUDA device")),
        "torch": Backend(torch_version is not None, f"PyTorch {torch_version} eager on the CPU"
                         if torch_version else "PyTorch does not import"),
        "torch-cuda": Backend(torch_version is not None,
                              f"PyTorch {torch_version} on {gpu}, CUDA graphs per batch size" if gpu else
                              "no CUDA device: runs on the CPU without CUDA graphs (for parity checks, not speed)"
                              if torch_version else "PyTorch does not import"),
    }
    bundle_problems: list[str] = []
    if bundle is not None:
        backends, bundle_problems = _for_bundle(Path(bundle), backends, gpus, trt_version)
    return Report(model, cores, list(flags), gpus, torch_version, torch_cuda, trt_version, trt_problem, packages,
                  providers, problems, backends, str(bundle) if bundle is not None else None, bundle_problems)


def _older(version: str, than: tuple[int, ...]) -> bool:
    parts = []
    for piece in version.split(".")[:len(than)]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) < than


def _provider(name: str, providers: list[str], gpu: str | None) -> Backend:
    if name not in providers:
        return Backend(False, f"ONNX Runtime has no {name} here (install dualhrq[gpu] on a CUDA machine)")
    if gpu is None:
        return Backend(False, f"{name} is installed but no CUDA device is visible")
    return Backend(True, f"ONNX Runtime {name} on {gpu}")


def _for_bundle(root: Path, backends: dict[str, Backend], gpus: list[Gpu], trt_version: str | None
                ) -> tuple[dict[str, Backend], list[str]]:
    """What each backend can serve of the bundle at ``root`` here, and the bundle's hash problems (with any, the
    server refuses the bundle, so no backend can serve it)."""
    from dualhrq.export.bundle import load_bundle, verify_bundle
    from dualhrq.export.gpu_target import GpuTarget

    bundle = load_bundle(root, verify=False)
    problems = verify_bundle(root).problems
    if problems:
        refused = Backend(False, "the bundle fails its hash check (below): nothing can serve it", [])
        return {name: refused for name in backends}, problems
    written = bundle.precisions
    out = {}
    for name, b in backends.items():
        why = b.why
        if name in GRAPH_PRECISIONS:
            precisions = [p for p in written if p in GRAPH_PRECISIONS[name]]
        elif name == "torch":
            precisions = ["fp32"]
        elif name == "torch-cuda":
            precisions = ["fp32", "fp16"] if gpus else ["fp32"]
        else:  # the native TensorRT plan: only where it was built
            trt = bundle.manifest.tensorrt
            recorded = trt.target()
            here = (GpuTarget(gpus[0].name, gpus[0].compute_capability, trt_version)
                    if gpus and trt_version else None)
            precisions = []
            if not trt.built:
                why = f"the bundle has no TensorRT plan ({trt.reason or 'export with --tensorrt'})"
            elif recorded is None:
                why = "the plan records no GPU (an older export): rebuild it here"
            elif here is None or recorded != here:
                why = f"the plan was built for {recorded.describe()}; rebuild it here"
            else:
                precisions = ["fp16" if trt.fp16 else "fp32"]
        out[name] = Backend(b.available and bool(precisions), why, precisions if b.available else [])
    return out, []


def format_report(r: Report) -> str:
    lines = [f"CPU        {r.cpu}, {r.cores} cores usable; flags {' '.join(r.cpu_flags) or 'none of interest'}",
             "GPU        " + ("; ".join(f"{g.name} (compute capability {g.compute_capability}, {g.memory_gib} GiB)"
                                       for g in r.gpus) or "none visible"),
             f"PyTorch    {r.torch or 'not installed'}" + (f", built with CUDA {r.torch_cuda}" if r.torch_cuda
                                                           else " (CPU build)" if r.torch else ""),
             f"TensorRT   {r.tensorrt or 'not installed'}" + (f": {r.tensorrt_problem}" if r.tensorrt and
                                                               r.tensorrt_problem else ""),
             "ORT        " + (", ".join(f"{k} {v}" for k, v in r.onnxruntime_packages.items()) or "not installed")
             + f"; providers {', '.join(r.onnxruntime_providers) or 'none'}"]
    width = 18 if r.bundle else 0
    lines.append(f"\n{'backend':<15}{'here':<6}{'precisions' if r.bundle else '':<{width}}")
    for name, b in r.backends.items():
        precisions = ", ".join(b.precisions or []) if r.bundle else ""
        lines.append(f"{name:<15}{'yes' if b.available else 'no':<6}{precisions:<{width}}{b.why}")
    if r.bundle:
        lines.append(f"(precisions: what {r.bundle} holds that each backend can serve here)")
    lines += [f"problem: {p}" for p in r.problems]
    lines += [f"bundle refused: {p}" for p in r.bundle_problems]
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="what this machine offers (CPU flags, GPU, CUDA, TensorRT, ONNX Runtime) and "
                       "which backends and precisions a bundle can use here",
                       description="Probe this machine for inference: CPU flags, GPUs, PyTorch's CUDA, TensorRT, the "
                                   "ONNX Runtime packages and providers; with --bundle, which backends and precisions "
                                   "can serve it here. Exit status 0 (the machine's problems are printed), 1 when the "
                                   "--bundle fails its hash check (a changed, missing or extra file), 2 when --bundle "
                                   "is not a bundle or --json cannot be written.")
    add_doctor_args(p)
    p.set_defaults(func=run_doctor)


def add_doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", metavar="B", help="also say which backends and precisions can serve this bundle here")
    p.add_argument("--json", type=output_file, metavar="F",
                   help="write the report as JSON (missing directories are made)")


def run_doctor(args: argparse.Namespace) -> int:
    report = diagnose(args.bundle)
    print(format_report(report))
    if args.json:
        made = made_parent(args.json)
        args.json.write_text(json.dumps(to_dict(report), indent=2))
        print(f"json: {args.json}{made}")
    return 1 if report.bundle_problems else 0


def to_dict(report: Report) -> dict[str, Any]:
    return msgspec.to_builtins(report)
