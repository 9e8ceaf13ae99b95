"""The CPU this process runs on: the cores it may keep busy and the instruction sets that decide inference speed.

Read from the OS (affinity, cgroup quota, /proc/cpuinfo), never assumed: the same bundle runs on an AVX2-only
laptop and on an AVX-512/VNNI server, and the engine's thread count and int8 variant follow what is there.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# The instruction sets that decide CPU inference speed: AVX2/FMA fp32, AVX-512 and VNNI int8, BF16, AMX.
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8")


def usable_cores(cgroup_root: str | Path = "/sys/fs/cgroup", self_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """How many cores this process may keep busy: its CPU affinity, capped by a cgroup CPU quota if any.

    os.cpu_count() counts the host's cores; in a container limited to two of sixteen, sixteen intra-op
    threads would contend for two cores and every node would wait on descheduled workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(Path(cgroup_root), Path(self_cgroup))
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota(root: Path, self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota in cores of this process's cgroup (v2 cpu.max, or v1 cfs_quota_us over cfs_period_us);
    None when unlimited or unreadable."""
    v2, v1 = "", ""
    try:
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2 = path.strip("/")
            elif "cpu" in controllers.split(","):
                v1 = path.strip("/")
    except (OSError, ValueError):
        pass
    for folder in (root / v2, root):
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    for folder in (root / "cpu" / v1, root / "cpu", root / "cpu,cpuacct" / v1):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            return None if quota < 0 else quota / int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
    return None


def cpu_model_and_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """("AMD EPYC ...", every flag of the first CPU), or ("", empty) where /proc/cpuinfo is absent."""
    model, flags = "", frozenset()
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def isa_flags(flags: frozenset[str] | None = None) -> list[str]:
    """The ISA_FLAGS this CPU has, in ISA_FLAGS order."""
    flags = cpu_model_and_flags()[1] if flags is None else flags
    return [f for f in ISA_FLAGS if f in flags]


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """int8 dot products without the 16-bit intermediate that makes AVX2's u8 x s8 kernels saturate."""
    flags = cpu_model_and_flags()[1] if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
