"""How long a task is expected to take, learned from the tasks that ran: what admission by wait time needs."""

from __future__ import annotations

TaskKind = tuple[str, int, int]  # model, OpenCV threads, images


class TaskDurations:
    """A moving average of the time from handing a task to a worker to its outcome, per kind of task."""

    SMOOTHING = 0.2  # weight of the newest task: follows a host that slows down within a few tasks

    def __init__(self) -> None:
        self._seconds: dict[TaskKind, float] = {}

    def expected_s(self, kind: TaskKind) -> float:
        """0 until a task of this kind has run: admission then goes by queue length alone."""
        return self._seconds.get(kind, 0.0)

    def record(self, kind: TaskKind, seconds: float) -> None:
        known = self._seconds.get(kind)
        self._seconds[kind] = seconds if known is None else known + self.SMOOTHING * (seconds - known)
