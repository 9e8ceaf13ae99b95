"""What machine a figure was measured on, in one line (benchmarks print it beside every figure)."""

from __future__ import annotations

import platform
from pathlib import Path

from dualhrq.cpu import cpu_model_and_flags, isa_flags, usable_cores


def cpu() -> tuple[str, tuple[str, ...], int]:
    """(model name, the inference-relevant ISA flags it has, cores this process may use)."""
    model, flags = cpu_model_and_flags()
    return model or platform.processor() or platform.machine(), tuple(isa_flags(flags)), usable_cores()


def machine_description() -> str:
    """E.g. "AMD EPYC (2 cores; avx2 fma f16c), 24 GiB, Linux x86_64, no GPU"."""
    model, flags, cores = cpu()
    isa = " ".join(flags) or "isa unknown"
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB"
    return f"{model} ({cores} cores; {isa}){mem}, {platform.system()} {platform.machine()}, {_gpu()}"


def _gpu() -> str:
    try:
        import torch
    except ImportError:
        return "GPU unknown"
    if torch.cuda.is_available():
        return "GPU " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "no GPU"
