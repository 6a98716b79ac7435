"""Worker and thread sizing follows the cores the process may use, including a container's CPU quota
(cgroup v2 or v1)."""

from __future__ import annotations

import os

import pytest

from yoso.cores import available_cores, bf16_instructions


@pytest.mark.parametrize("cpu_max, cap", [("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000\n", 2),
                                          ("50000 100000\n", 1)])
def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path, cpu_max, cap):
    quota_file = tmp_path / "cpu.max"
    quota_file.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(quota_file, tmp_path / "no-v1") == (affinity if cap is None else min(affinity, cap))


@pytest.mark.parametrize("quota, cap", [("-1", None), ("100000", 1), ("250000", 3)])
def test_a_cgroup_v1_cfs_quota_caps_the_cores(tmp_path, quota, cap):
    (tmp_path / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(tmp_path / "no-v2", tmp_path) == (affinity if cap is None else min(affinity, cap))


def test_without_a_cgroup_file_the_affinity_counts(tmp_path):
    assert available_cores(tmp_path / "absent", tmp_path / "absent-v1") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("flags, found", [("fpu avx512f avx512_bf16 amx_tile amx_bf16 amx_int8", "AMX"),
                                          ("fpu avx512f avx512_vnni avx512_bf16", "AVX512-BF16"),
                                          ("fpu sse4_2 avx2 avx512f", None)])
def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path, flags, found):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert bf16_instructions(cpuinfo) == found


def test_without_proc_cpuinfo_there_is_no_bf16(tmp_path):
    assert bf16_instructions(tmp_path / "none") is None
