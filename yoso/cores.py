"""How many cores this process may really use: its CPU affinity, capped by a cgroup CPU quota.

os.cpu_count() reports the host's cores; in a container or a Kubernetes pod with a CPU limit, sizing
OpenCV's threads by it would oversubscribe the cores the process is actually given.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _cgroup_quota_cores(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def available_cores(cpu_max: Path = CGROUP_V2_CPU_MAX) -> int:
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota_cores(cpu_max)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores
