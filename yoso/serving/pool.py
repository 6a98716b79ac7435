"""Inference worker processes, seen from the server's event loop.

The pool starts the workers, waits until each has loaded and warmed its models, runs one task at a time on
an idle worker, and replaces a worker that dies, answering its task with an error instead of losing it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from yoso.serving import worker
from yoso.serving.tasks import Task, TaskOutcome, WorkerFailed, WorkerReady

log = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")  # never fork a process that holds threads


class WorkerCrashed(RuntimeError):
    """The worker process died while running a task."""


class PoolStartError(RuntimeError):
    """A worker could not load its models."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    connection: Connection
    ready: asyncio.Future[WorkerReady]
    task: asyncio.Future[TaskOutcome] | None = None
    task_model: str = ""
    models: set[str] = field(default_factory=set)


class WorkerPool:
    def __init__(self, size: int, model_dir: Path, preload: list[str], cpu_count: int) -> None:
        self.size = size
        self.model_dir = model_dir
        self.preload = list(preload)
        self.cpu_count = cpu_count
        self.on_idle: Callable[[], None] = lambda: None
        self.on_model_loaded: Callable[[str, float], None] = lambda name, seconds: None
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._closing = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    def workers_with(self, model: str) -> int:
        return sum(1 for w in self._workers if model in w.models)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

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
        chosen.task_model = task.model
        try:
            chosen.connection.send(task)
        except OSError:
            self._on_exit(chosen)
        return chosen.task

    async def stop(self) -> None:
        self._closing = True
        for w in self._workers:
            self._detach(w)
            w.connection.close()
        for w in self._workers:
            await asyncio.to_thread(w.process.join, 5)
            if w.process.is_alive():
                w.process.kill()
        self._workers.clear()

    def _spawn(self) -> _Worker:
        loop = asyncio.get_running_loop()
        ours, theirs = _SPAWN.Pipe()
        process = _SPAWN.Process(
            target=worker.serve,
            args=(theirs, str(self.model_dir), self.preload, self.cpu_count),
            name="yoso-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        w = _Worker(process, ours, loop.create_future())
        self._workers.append(w)
        loop.add_reader(ours.fileno(), self._on_message, w)
        return w

    def _on_message(self, w: _Worker) -> None:
        try:
            message = w.connection.recv()
        except (EOFError, OSError):
            self._on_exit(w)
            return
        if isinstance(message, WorkerReady):
            w.models.update(message.model_load_s)
            for name, seconds in message.model_load_s.items():
                self.on_model_loaded(name, seconds)
            w.ready.set_result(message)
            self._make_idle(w)
        elif isinstance(message, WorkerFailed):
            if not w.ready.done():
                w.ready.set_exception(PoolStartError(message.message))
        elif isinstance(message, TaskOutcome):
            task, w.task = w.task, None
            if message.model_load_s is not None:
                w.models.add(w.task_model)
                self.on_model_loaded(w.task_model, message.model_load_s)
            if task is not None and not task.done():
                task.set_result(message)
            self._make_idle(w)

    def _make_idle(self, w: _Worker) -> None:
        self._idle.append(w)
        self.on_idle()

    def _detach(self, w: _Worker) -> None:
        try:
            asyncio.get_running_loop().remove_reader(w.connection.fileno())
        except (OSError, ValueError):
            pass

    def _on_exit(self, w: _Worker) -> None:
        """A worker died: answer its task, forget it, and start a replacement."""
        self._detach(w)
        w.connection.close()
        if w in self._idle:
            self._idle.remove(w)
        if w in self._workers:
            self._workers.remove(w)
        exitcode = w.process.exitcode
        if not w.ready.done():
            w.ready.set_exception(PoolStartError(f"a worker exited during start-up (exit code {exitcode})"))
        if w.task is not None and not w.task.done():
            w.task.set_exception(WorkerCrashed(f"the inference worker died (exit code {exitcode})"))
        if not self._closing:
            log.error("inference worker %s died (exit code %s); starting a replacement", w.process.pid, exitcode)
            self._spawn()
