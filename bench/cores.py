"""Where the machine's cores went during a phase: the inference workers, the server process in front of them
(HTTP, admission, the queue), the load clients, the machine's other processes, and nobody (idle).

Goodput can only be the workers' part. At the raw limit's speed per core, a phase that leaves the workers 1.8 of
2 cores serves at most 0.9 x the raw limit, however well the server queues. So each row says whether a ratio
below 1 was lost in the workers (the queue let them idle, or they ran slower than the raw model) or to the
front and the clients that share the cores with them: `workers_x_raw` is goodput over what the workers' cores
give at the raw speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import astuple, dataclass

import psutil

from bench.others import machine_seconds


@dataclass(frozen=True)
class CoreUse:
    """Cores used on average (CPU seconds over wall seconds) by each part of the phase; NaN where unknown."""

    workers: float
    front: float
    clients: float
    others: float
    idle: float

    @classmethod
    def unknown(cls) -> CoreUse:
        return cls(math.nan, math.nan, math.nan, math.nan, math.nan)

    def __str__(self) -> str:
        return " / ".join("?" if math.isnan(cores) else f"{cores:.2f}"
                          for cores in astuple(self))


def _cpu_s(processes: list[psutil.Process]) -> dict[int, float]:
    """Each live process's CPU seconds so far, by pid."""
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


class CoresMeter:
    """`start()` at the beginning of a measured window, `stop()` at its end: the cores each part used meanwhile.

    The server is `server_pid` (the front) and its descendants (the workers); the clients are `client_pids`. A
    process that exits inside the window takes its CPU time with it: it is not counted.
    """

    def __init__(self, server_pid: int, client_pids: list[int]) -> None:
        self.server = psutil.Process(server_pid)
        self.clients = [psutil.Process(pid) for pid in client_pids]

    def _snapshot(self) -> tuple[float, dict[int, float], dict[int, float], dict[int, float],
                                 tuple[float, float, float] | None]:
        workers = _cpu_s(self.server.children(recursive=True))
        return time.monotonic(), _cpu_s([self.server]), workers, _cpu_s(self.clients), machine_seconds()

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> CoreUse:
        (wall0, front0, workers0, clients0, machine0), (wall1, front1, workers1, clients1, machine1) = \
            self._start, self._snapshot()
        wall = wall1 - wall0
        if wall <= 0 or machine0 is None or machine1 is None:
            return CoreUse.unknown()

        def used(before: dict[int, float], after: dict[int, float]) -> float:
            return sum(cpu - before[pid] for pid, cpu in after.items() if pid in before) / wall

        workers, front, clients = used(workers0, workers1), used(front0, front1), used(clients0, clients1)
        busy, idle = (machine1[0] - machine0[0]) / wall, (machine1[1] - machine0[1]) / wall
        return CoreUse(workers, front, clients, max(0.0, busy - workers - front - clients), idle)
