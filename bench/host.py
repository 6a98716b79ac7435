"""What the host took from the run: the share of this machine's CPU time its hypervisor gave to others.

On a virtual machine the hypervisor may run other guests on our cores ("steal", the eighth figure of
/proc/stat's `cpu` line). A phase measured while the host stole a tenth of the time understates the
server by about that much, and more (neighbours also share caches and the other thread of each core, which
no counter shows), so every figure carries it.
"""

from __future__ import annotations

import math
from pathlib import Path

PROC_STAT = Path("/proc/stat")
STEAL = 7  # user nice system idle iowait irq softirq steal ...


def _ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks since boot, or None where the kernel does not say (not Linux)."""
    try:
        fields = [int(value) for value in PROC_STAT.read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (fields[STEAL], sum(fields[:STEAL + 1])) if len(fields) > STEAL else None


class StealMeter:
    """`with StealMeter() as meter: ...`, then `meter.share`: stolen / all CPU time in the block (NaN if unknown)."""

    share = math.nan

    def __enter__(self) -> StealMeter:
        self._start = _ticks()
        return self

    def __exit__(self, *exc_info: object) -> None:
        end = _ticks()
        if self._start and end and end[1] > self._start[1]:
            self.share = (end[0] - self._start[0]) / (end[1] - self._start[1])
