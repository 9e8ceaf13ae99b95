"""The cores a process may use (affinity capped by a cgroup quota) and the CPU's instruction sets."""

from __future__ import annotations

import os

from dualhrq.cpu import cpu_model_and_flags, has_vnni, isa_flags, usable_cores


def _affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_a_cgroup_v2_quota_caps_the_cores_below_the_affinity(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: two threads can use it
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/job\n")
    assert usable_cores(tmp_path, self_cgroup) == min(_affinity(), 2)
    (tmp_path / "job" / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(tmp_path, self_cgroup) == 1


def test_a_cgroup_v1_quota_caps_the_cores_and_no_quota_leaves_the_affinity(tmp_path):
    cpu = tmp_path / "cpu" / "box"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("100000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("4:memory:/box\n1:cpu,cpuacct:/box\n")
    assert usable_cores(tmp_path, self_cgroup) == 1
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cores(tmp_path, self_cgroup) == _affinity()
    assert usable_cores(tmp_path / "absent", tmp_path / "absent") == _affinity()


def test_cpu_flags_are_read_from_cpuinfo_and_vnni_is_told_apart(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nmodel name : Test CPU\nflags : fpu avx2 fma avx512f avx512_vnni\n\n"
                    "processor : 1\nmodel name : Test CPU\nflags : fpu avx2 fma avx512f avx512_vnni\n")
    model, flags = cpu_model_and_flags(info)
    assert model == "Test CPU" and isa_flags(flags) == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert has_vnni(flags) and not has_vnni(frozenset({"avx2", "fma"}))
