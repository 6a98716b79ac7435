"""What admission expects of a wait: how long each kind of task takes, how far actual waits run past what was
expected, and how waiting tasks take the workers in turn (yoso.serving.admission applies them)."""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable

from yoso.serving.tasks import TaskKind


class TaskTimes:
    """How long a task takes, from handing it to a worker to its outcome: a moving average per kind."""

    SMOOTHING = 0.1  # weight of the newest task: follows a host that slows down within a second or so of tasks
    OUTLIER = 3.0  # a task counts at most this many times the expectation: one huge image must not move it far

    def __init__(self) -> None:
        self._seconds: dict[TaskKind, float] = {}

    def known(self) -> dict[TaskKind, float]:
        return dict(self._seconds)

    def expected_s(self, kind: TaskKind) -> float:
        """The learned time of this kind; else the model's time for one request at these threads, times the
        requests; 0 when nothing of the model at these threads is known yet (admission then goes by the caps)."""
        if kind in self._seconds:
            return self._seconds[kind]
        model, threads, requests = kind
        return self._seconds.get((model, threads, 1), 0.0) * requests

    def record(self, kind: TaskKind, seconds: float) -> None:
        known = self._seconds.get(kind)
        if known is None:
            self._seconds[kind] = seconds
        else:
            self._seconds[kind] = known + self.SMOOTHING * (min(seconds, self.OUTLIER * known) - known)

    def seed(self, kind: TaskKind, seconds: float) -> None:
        """A first estimate (a worker's warm-up) of a kind nothing is known of yet; real tasks then move it."""
        self._seconds.setdefault(kind, seconds)


class WaitMargin:
    """How far actual waits run past their expectation (Admission.served counts all a caller waits beyond its own
    task): the 99th percentile of actual / expected over the waits of the last half minute that were expected to
    take a good part of the budget (shorter ones are not at stake). Old waits age out, so a slow spell stretches
    expectations for half a minute at most."""

    WINDOW_S = 30.0
    MIN_SAMPLES = 32  # until then, 1: the expectation alone decides
    MAX_FACTOR = 2.0  # past it the task times themselves are wrong, and they are learned apart
    SHARE_OF_BUDGET = 0.25  # waits expected shorter than this share of the budget teach nothing

    def __init__(self, budget_s: float, clock: Callable[[], float]) -> None:
        self.min_expected_s = budget_s * self.SHARE_OF_BUDGET
        self.clock = clock
        self._ratios: deque[tuple[float, float]] = deque()  # (when, actual / expected), oldest first
        self._ordered: list[float] = []  # the same ratios, smallest first: every admission check reads a percentile
        self.last = 1.0  # the factor last applied: /metrics reads it from another thread

    def record(self, expected_s: float, actual_s: float) -> None:
        if expected_s >= self.min_expected_s:
            ratio = actual_s / expected_s
            self._ratios.append((self.clock(), ratio))
            bisect.insort(self._ordered, ratio)

    def factor(self) -> float:
        """What to multiply an expected wait by (1 to MAX_FACTOR) so that 99 in 100 actual waits are shorter."""
        while self._ratios and self._ratios[0][0] < self.clock() - self.WINDOW_S:
            _, ratio = self._ratios.popleft()
            del self._ordered[bisect.bisect_left(self._ordered, ratio)]
        ordered = self._ordered
        self.last = 1.0 if len(ordered) < self.MIN_SAMPLES else min(
            self.MAX_FACTOR, max(1.0, ordered[int(0.99 * len(ordered))]))
        return self.last


def run_in_turn(free_at: list[float], tasks: int, seconds: float) -> None:
    """Give `tasks` tasks of `seconds` each, one after another, to the worker free first (`free_at`: a heap of when
    each worker is free). Once no worker is free more than a task later than another, each takes one in turn, so
    whole turns are added at once."""
    if seconds <= 0:
        return
    while tasks and max(free_at) - free_at[0] > seconds:
        heapq.heapreplace(free_at, free_at[0] + seconds)
        tasks -= 1
    turns, tasks = divmod(tasks, len(free_at))
    if turns:
        free_at[:] = [at + turns * seconds for at in free_at]  # each moved alike: still a heap
    for _ in range(tasks):
        heapq.heapreplace(free_at, free_at[0] + seconds)
