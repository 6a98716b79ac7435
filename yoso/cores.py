"""What the CPU gives this process: how many cores it may really use (its CPU affinity, capped by a cgroup CPU
quota), and whether they compute in bf16.

os.cpu_count() reports the host's cores; in a container or a Kubernetes pod with a CPU limit, sizing
OpenCV's threads by it would oversubscribe the cores the process is actually given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}  # Linux's names; the best first


def _read_numbers(*paths: Path) -> list[str] | None:
    try:
        return [word for path in paths for word in path.read_text().split()]
    except OSError:
        return None


def _quota_cores(cpu_max: Path, cgroup_v1: Path) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "150000 100000"), else v1's cfs quota and period (-1: none)."""
    words = _read_numbers(cpu_max) or _read_numbers(cgroup_v1 / "cpu.cfs_quota_us", cgroup_v1 / "cpu.cfs_period_us")
    if not words or len(words) < 2 or words[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(words[0]), int(words[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cores(cpu_max: Path = CGROUP_V2_CPU_MAX, cgroup_v1: Path = CGROUP_V1_CPU) -> int:
    cores = len(os.sched_getaffinity(0))
    quota = _quota_cores(cpu_max, cgroup_v1)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def bf16_instructions(cpuinfo: Path = CPUINFO) -> str | None:
    """The CPU's instructions for bf16 arithmetic (AMX's tiles, else AVX512-BF16), or None when it has none."""
    try:
        flags = set(next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")),
                         "").split())
    except OSError:
        return None
    return next((name for flag, name in BF16_FLAGS.items() if flag in flags), None)
