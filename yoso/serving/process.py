"""One inference worker process as the pool sees it: its handle, the task it runs (and the one sent ahead), why it
may go, and how it is reaped."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.process import BaseProcess
from typing import Any

from yoso.serving.tasks import ModelEntry, Running, TaskKind, TaskOutcome, WorkerConfig, WorkerReady

log = logging.getLogger(__name__)
SPAWN = multiprocessing.get_context("spawn")  # never fork a process that holds threads
EXIT_WAIT_S = 5.0  # how long a worker whose socket closed may take to exit before it is killed
AHEAD_PATIENCE = 3.0  # x its expected time: a task running this long gives up the task sent ahead of it ...
AHEAD_PATIENCE_MIN_S = 1.0  # ... but never sooner (a task just begun, a time not yet learned)


def patience_s(expected_s: float) -> float:
    """How long a task expected to take `expected_s` may run before the task sent ahead of it is taken back."""
    return max(AHEAD_PATIENCE * expected_s, AHEAD_PATIENCE_MIN_S)


class Exit(str, Enum):
    """Why a worker went and was replaced (the `reason` label of yoso_workers_replaced_total)."""

    died = "died"  # crashed, or killed from outside
    hung = "hung"  # still running a task past the deadline of every request in it: killed by the watchdog
    start_timeout = "start_timeout"  # had not loaded its models within YOSO_STARTUP_TIMEOUT_S: killed


class WorkerCrashed(RuntimeError):
    """The worker process died while running a task."""


class TaskOverran(RuntimeError):
    """The task ran past the deadline of every request in it; its worker was killed and is being replaced."""


class TaskNotStarted(RuntimeError):
    """The task was sent ahead to a worker that went, or gave it back, before it began: it may run elsewhere."""


class VersionRefused(RuntimeError):
    """A new version of a model could not be loaded and warmed in every worker: the old one keeps serving."""


class PoolStartError(RuntimeError):
    """A worker could not load its models, or not within the start-up bound."""


@dataclass(eq=False)
class Assigned:
    """A task given to a worker: the future its callers await, and what its start needs."""

    outcome: asyncio.Future[Any]  # its TaskOutcome (a version load's: its seconds)
    kind: TaskKind
    deadline: float  # time.monotonic(): the watchdog's, counted from when the task begins
    on_start: Callable[[], None]
    take_back: asyncio.TimerHandle | None = None  # sent ahead: when it is taken back unless begun (hold_ahead)


@dataclass(eq=False)
class WorkerProcess:
    """The pool's handle on one inference process (which runs yoso.serving.worker.Worker)."""

    process: BaseProcess
    ready: asyncio.Future[WorkerReady]
    socket: socket.socket
    writer: asyncio.WriteTransport | None = None  # set once the loop has opened the socket
    connecting: asyncio.Task[None] | None = None  # held here, as `reaper`: the loop keeps only a weak reference
    reaper: asyncio.Future[None] | None = None
    task: asyncio.Future[TaskOutcome] | None = None
    task_kind: TaskKind = ("", 0, 0)  # of the task running or last run
    task_started: float = 0.0  # time.monotonic()
    ahead: Assigned | None = None  # sent while it runs `task`: waits in its socket, begins as `task` ends
    watchdog: asyncio.TimerHandle | None = None  # kills the worker at its start-up bound, then at its task's deadline
    killed: Exit | None = None  # set when the pool kills it: whatever it still sends is ignored
    models: set[str] = field(default_factory=set)
    entries: dict[str, ModelEntry] = field(default_factory=dict)  # each model's version when it was started
    versions: set[tuple[str, int]] = field(default_factory=set)  # (model, version) loaded in it
    loads: deque[tuple[ModelEntry, asyncio.Future[float]]] = field(default_factory=deque)  # to load between tasks

    @property
    def live(self) -> bool:
        """Loaded its models and can take tasks."""
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    @property
    def running(self) -> Running | None:
        """Its task's kind and start (and the kind of the task sent ahead), or None while it is idle."""
        return None if self.task is None else Running(self.task_kind, self.task_started, self.ahead and self.ahead.kind)

    def takes_ahead(self, expected_s: float) -> bool:
        """Runs a task (not a version load: threads 0) that is within its patience (`expected_s`: its expected
        time), none sent ahead, no load to come, and is not being killed."""
        return (self.task is not None and self.task_kind[1] > 0 and self.ahead is None and not self.loads
                and self.killed is None and time.monotonic() < self.task_started + patience_s(expected_s))

    def hold_ahead(self, assigned: Assigned, expected_s: float) -> None:
        """`assigned` waits in its socket for `task` (expected to take `expected_s`) to end. Should `task` run past
        its patience (hung, or slowed down), the one ahead is taken back: it fails TaskNotStarted, to be queued
        again, and the worker, should it wake, runs its copy for nobody."""
        self.ahead = assigned
        after_s = max(0.0, self.task_started + patience_s(expected_s) - time.monotonic())
        assigned.take_back = asyncio.get_running_loop().call_later(after_s, self._take_back)

    def _take_back(self) -> None:
        if self.ahead is None or self.ahead.outcome.done():
            return
        taken, for_nobody = self.ahead, asyncio.get_running_loop().create_future()
        for_nobody.add_done_callback(lambda copy: copy.cancelled() or copy.exception())  # no "never retrieved"
        self.ahead = dataclasses.replace(taken, outcome=for_nobody, on_start=lambda: None, take_back=None)
        seconds = time.monotonic() - self.task_started
        taken.outcome.set_exception(TaskNotStarted(f"taken back from a worker whose task ran {seconds:.1f} s"))

    def begin(self, assigned: Assigned, grace_s: float = 0.0) -> None:
        """`assigned` (the task sent ahead, or another) runs from now; past its deadline, and at least `grace_s`
        from now (a task sent ahead may begin when its callers have given up: it is not hung for that), the
        watchdog kills the worker (`overran`)."""
        if assigned is self.ahead:
            self.ahead = None
        if assigned.take_back is not None:
            assigned.take_back.cancel()
        self.task, self.task_kind, self.task_started = assigned.outcome, assigned.kind, time.monotonic()
        self.watchdog = asyncio.get_running_loop().call_later(max(assigned.deadline - self.task_started, grace_s),
                                                              self.overran)
        assigned.on_start()

    def start_overdue(self, bound_s: float) -> None:
        """The watchdog, at the start-up bound: a worker still loading its models is killed (the pool replaces it)."""
        if not self.ready.done():
            self.ready.set_exception(PoolStartError(
                f"a worker did not load its models within {bound_s:g} s (YOSO_STARTUP_TIMEOUT_S)"))
            self.kill(Exit.start_timeout)

    def overran(self) -> None:
        """The watchdog, at the deadline of every request in its task: the worker is killed (the pool replaces it)."""
        if self.task is None or self.task.done():
            return
        seconds = time.monotonic() - self.task_started
        log.error("inference worker %s has run one task for %.1f s, past the deadline of every request in it; "
                  "killing and replacing it", self.process.pid, seconds)
        self.task.set_exception(TaskOverran(f"the inference worker ran this task for {seconds:.1f} s and was replaced"))
        self.kill(Exit.hung)

    def answer_unfinished(self, how: str) -> None:
        """It is gone: its task fails WorkerCrashed, the task sent ahead TaskNotStarted (it may run elsewhere), and
        the versions it had not begun to load are let go without a refusal (its replacement loads them on use)."""
        if self.task is not None and not self.task.done():
            self.task.set_exception(WorkerCrashed(f"the inference worker died{how}"))
        if self.ahead is not None and not self.ahead.outcome.done():
            self.ahead.outcome.set_exception(TaskNotStarted(f"the inference worker went{how} before it began the task"))
        for _, load in self.loads:
            if not load.done():
                load.set_result(0.0)

    def kill(self, reason: Exit) -> None:
        self.killed = reason
        self.process.kill()  # the socket then closes, and _on_exit answers and replaces


async def reap(w: WorkerProcess) -> None:
    """Wait for a worker whose socket has closed to exit, so that no zombie is left; kill it if it lingers."""
    await asyncio.to_thread(w.process.join, EXIT_WAIT_S)
    if w.process.is_alive():
        w.process.kill()
        await asyncio.to_thread(w.process.join, EXIT_WAIT_S)


def log_failed_start(ready: asyncio.Future[WorkerReady]) -> None:
    """A replacement's `ready` is done: say why it did not start, if it did not."""
    if not ready.cancelled() and ready.exception() is not None:
        log.error("a replacement worker failed to start: %s", ready.exception())


def close(w: WorkerProcess) -> None:
    if w.writer is not None:
        w.writer.close()
    else:
        w.socket.close()


def run_worker(server: socket.socket, config: WorkerConfig) -> None:
    """A worker process's entry: OpenCV and the models load there, never in the server process."""
    from yoso.serving.worker import serve

    serve(server, config)
