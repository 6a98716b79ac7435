"""Inference worker processes, seen from the server's event loop.

The pool starts the workers, waits until each has loaded and warmed its models, runs one task at a time on
an idle worker, and replaces a worker that dies, answering its task with an error instead of losing it.
Each worker's socket is read and written by the event loop itself (yoso.serving.wire): a task reaches its
worker and an outcome reaches its caller without a thread handing it over.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

from yoso.serving import wire, worker
from yoso.serving.durations import TaskDurations, TaskKind
from yoso.serving.tasks import Task, TaskOutcome, WorkerFailed, WorkerReady

log = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")  # never fork a process that holds threads
RESPAWN_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive start-up failures


class WorkerCrashed(RuntimeError):
    """The worker process died while running a task."""


class PoolStartError(RuntimeError):
    """A worker could not load its models."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    ready: asyncio.Future[WorkerReady]
    socket: socket.socket
    writer: asyncio.StreamWriter | None = None  # set once the loop has opened the socket
    listener: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference to a task
    task: asyncio.Future[TaskOutcome] | None = None
    task_kind: TaskKind = ("", 0, 0)  # of the task running or last run
    task_started: float = 0.0  # time.monotonic()
    task_expected_s: float = 0.0
    models: set[str] = field(default_factory=set)

    @property
    def task_model(self) -> str:
        return self.task_kind[0]

    @property
    def live(self) -> bool:
        """Loaded its models and can take tasks."""
        return self.ready.done() and not self.ready.exception()

    def free_in(self, now: float) -> float:
        """Seconds until this worker is expected to finish its task: 0 when idle, or when the task overruns."""
        return 0.0 if self.task is None else max(0.0, self.task_started + self.task_expected_s - now)


class WorkerPool:
    def __init__(self, size: int, model_dir: Path, preload: list[str], cpu_count: int, max_pixels: int,
                 idle_priority: bool) -> None:
        self.size = size
        self.model_dir = model_dir
        self.preload = list(preload)
        self.cpu_count = cpu_count
        self.max_pixels = max_pixels
        self.idle_priority = idle_priority
        self.on_idle: Callable[[], None] = lambda: None
        self.on_model_loaded: Callable[[str, float], None] = lambda name, seconds: None
        self.on_task_done: Callable[[str, TaskOutcome], None] = lambda model, outcome: None
        self.durations = TaskDurations()
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._closing = False
        self._failed_starts = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    @property
    def live(self) -> int:
        """Workers that have loaded their models and can take tasks."""
        return sum(1 for w in self._workers if w.live)

    def workers_with(self, model: str) -> int:
        return sum(1 for w in self._workers if model in w.models)

    def expected_free(self, ahead: int) -> tuple[float, float]:
        """For a task with `ahead` tasks queued before it: in how many seconds a worker is expected to be free
        to take it, and how long the task that worker runs meanwhile is expected to take (0 while unknown)."""
        now = time.monotonic()
        free = [(w.free_in(now), w.task_expected_s) for w in self._workers if w.live]
        if not free:
            return 0.0, 0.0
        heapq.heapify(free)
        for _ in range(ahead):
            at, each = heapq.heappop(free)
            heapq.heappush(free, (at + each, each))
        return free[0]

    async def start(self) -> None:
        """Start every worker and return once all have loaded and warmed the preload models."""
        started = [self._spawn() for _ in range(self.size)]
        await asyncio.gather(*(w.ready for w in started))

    def threads_for_next_task(self) -> int:
        """All cores for a task that runs alone; otherwise each worker's share, so cores are never oversubscribed."""
        return self.cpu_count if self.busy == 0 else max(1, self.cpu_count // self.size)

    def submit(self, task: Task) -> asyncio.Future[TaskOutcome]:
        """Run `task` on an idle worker (the caller checks `idle` first)."""
        chosen = self._idle.pop()
        chosen.task = asyncio.get_running_loop().create_future()
        chosen.task_kind = (task.model, task.threads, len(task.images))
        chosen.task_expected_s = self.durations.expected_s(chosen.task_kind)
        chosen.task_started = time.monotonic()
        chosen.writer.write(wire.encode(task))  # the transport sends what the socket cannot take yet
        return chosen.task

    async def stop(self) -> None:
        """End every worker's stream of tasks (a worker exits when it reads the end), then reap it.

        Only the server's direction is shut: a task still running is answered before its worker exits.
        """
        self._closing = True
        stopping = list(self._workers)  # each worker leaves self._workers as its socket closes
        for w in stopping:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write_eof()
            else:
                _close(w)
        for w in stopping:
            await asyncio.to_thread(w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()
        self._workers.clear()

    def _spawn(self) -> _Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        process = _SPAWN.Process(
            target=worker.serve,
            args=(theirs, str(self.model_dir), self.preload, self.cpu_count, self.max_pixels, self.idle_priority),
            name="yoso-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        w = _Worker(process, loop.create_future(), ours)
        self._workers.append(w)
        w.listener = loop.create_task(self._listen(w), name=f"yoso-worker-{process.pid}")
        return w

    async def _listen(self, w: _Worker) -> None:
        """Every message of one worker, in order, until its socket closes; then the worker is gone."""
        try:
            reader, w.writer = await asyncio.open_unix_connection(sock=w.socket)
            while True:
                self._on_message(w, await wire.read(reader))
        except (asyncio.IncompleteReadError, OSError):
            pass
        except Exception:  # a message that cannot be read or handled: the worker's state is unknown
            log.exception("inference worker %s sent a message that failed; replacing the worker", w.process.pid)
            w.process.kill()
        self._on_exit(w)

    def _on_message(self, w: _Worker, message: object) -> None:
        if w not in self._workers:
            return
        if isinstance(message, WorkerReady):
            w.models.update(message.model_load_s)
            for name, seconds in message.model_load_s.items():
                self.on_model_loaded(name, seconds)
            w.ready.set_result(message)
            self._failed_starts = 0
            self._make_idle(w)
        elif isinstance(message, WorkerFailed):
            if not w.ready.done():
                w.ready.set_exception(PoolStartError(message.message))
        elif isinstance(message, TaskOutcome):
            task, w.task = w.task, None
            if message.model_load_s is not None:
                w.models.add(w.task_model)
                self.on_model_loaded(w.task_model, message.model_load_s)
            elif message.inference is not None:  # neither a model load nor only unreadable images: a typical task
                self.durations.record(w.task_kind, time.monotonic() - w.task_started)
            self.on_task_done(w.task_model, message)  # once per task, whether or not its callers still wait
            if task is not None and not task.done():
                task.set_result(message)
            self._make_idle(w)

    def _make_idle(self, w: _Worker) -> None:
        self._idle.append(w)
        self.on_idle()

    def _on_exit(self, w: _Worker) -> None:
        """A worker died: answer its task, forget it, and start a replacement."""
        if w not in self._workers:
            return
        _close(w)
        if w in self._idle:
            self._idle.remove(w)
        self._workers.remove(w)
        how = "" if w.process.exitcode is None else f" (exit code {w.process.exitcode})"
        if not w.ready.done():
            w.ready.set_exception(PoolStartError(f"a worker exited during start-up{how}"))
        if w.ready.exception() is not None:
            self._failed_starts += 1
        if w.task is not None and not w.task.done():
            w.task.set_exception(WorkerCrashed(f"the inference worker died{how}"))
        if self._closing:
            return
        delay = RESPAWN_DELAYS_S[min(self._failed_starts, len(RESPAWN_DELAYS_S) - 1)]
        log.error("inference worker %s died%s; starting a replacement in %g s", w.process.pid, how, delay)
        asyncio.get_running_loop().call_later(delay, self._replace)

    def _replace(self) -> None:
        if self._closing:
            return
        replacement = self._spawn()
        replacement.ready.add_done_callback(_log_failed_start)


def _log_failed_start(ready: asyncio.Future[WorkerReady]) -> None:
    if ready.exception() is not None:
        log.error("a replacement worker failed to start: %s", ready.exception())


def _close(w: _Worker) -> None:
    if w.writer is not None:
        w.writer.close()
    else:
        w.socket.close()
