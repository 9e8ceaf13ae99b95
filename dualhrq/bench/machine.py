"""What machine a figure was measured on, in one line (benchmarks print it beside every figure)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The instruction sets that decide CPU inference speed: AVX2/FMA fp32, AVX-512 and VNNI int8, AMX bf16/int8.
_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu() -> tuple[str, tuple[str, ...], int]:
    """(model name, the inference-relevant ISA flags it has, cores this process may use)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return model, tuple(f for f in _ISA if f in flags), cores


def machine_description() -> str:
    """E.g. "Intel Xeon ... (2 cores; avx2 fma), 24 GiB, Linux x86_64, no GPU"."""
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
