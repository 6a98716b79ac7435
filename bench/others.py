"""What other processes of this machine took from the run: the share of its CPU time they used meanwhile.

The benchmark's own CPU time is this process's and its children's, once they have exited and been waited for
(the server counts its workers when it reaps them, the benchmark counts the server when it stops it); every
other busy tick of /proc/stat is someone else's: tests, builds, another benchmark. A phase that shared two
cores with them measures less than the machine can do, which the ratios between phases then carry.
"""

from __future__ import annotations

import math
import os

import psutil

from bench.host import PROC_STAT

BUSY = (0, 1, 2, 5, 6)  # user nice system irq softirq (idle, iowait and the host's steal are nobody's here)
IDLE = (3, 4)  # idle iowait


def machine_seconds() -> tuple[float, float, float] | None:
    """(busy, idle, all) CPU seconds of the machine since boot (all: the host's steal too), or None where the kernel
    does not say (not Linux)."""
    try:
        ticks = [int(value) for value in PROC_STAT.read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    per_second = os.sysconf("SC_CLK_TCK")
    return sum(ticks[i] for i in BUSY) / per_second, sum(ticks[i] for i in IDLE) / per_second, sum(ticks) / per_second


def _own_seconds() -> float:
    """CPU seconds of this process and of its children it has reaped."""
    own = psutil.Process().cpu_times()
    return own.user + own.system + own.children_user + own.children_system


class OthersMeter:
    """`with OthersMeter() as meter: ...` with every child process reaped inside the block, then `meter.share`:
    the share of all CPU time in the block that other processes used (NaN if unknown)."""

    share = math.nan

    def __enter__(self) -> OthersMeter:
        self._start = machine_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc_info: object) -> None:
        (start, own_start), end, ours = self._start, machine_seconds(), _own_seconds()
        if start and end and end[2] > start[2]:
            busy, _, whole = (after - before for after, before in zip(end, start))
            self.share = min(1.0, max(0.0, (busy - (ours - own_start)) / whole))
