"""Inference worker processes, seen from the server's event loop.

The pool starts the workers, waits until each has loaded and warmed its models, runs one task at a time on
an idle worker, and keeps every worker alive or replaced: a worker that dies is replaced and its task
answered with an error; a worker still loading past the start-up bound, or still running a task past the
deadline of every request in it, is killed and replaced the same way. Each worker's socket is read and
written by the event loop itself (yoso.serving.wire): a task reaches its worker and an outcome reaches its
caller without a thread handing it over. A log level set at run time reaches every worker the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.process import BaseProcess

from yoso.serving import wire
from yoso.serving.tasks import (LogLevel, Running, Task, TaskKind, TaskOutcome, WorkerConfig, WorkerFailed,
                                WorkerReady)

log = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")  # never fork a process that holds threads
RESPAWN_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive start-up failures
EXIT_WAIT_S = 5.0  # how long a worker whose socket closed may take to exit before it is killed


class Exit(str, Enum):
    """Why a worker went and was replaced (the `reason` label of yoso_workers_replaced_total)."""

    died = "died"  # crashed, or killed from outside
    hung = "hung"  # still running a task past the deadline of every request in it: killed by the watchdog
    start_timeout = "start_timeout"  # had not loaded its models within YOSO_STARTUP_TIMEOUT_S: killed


class WorkerCrashed(RuntimeError):
    """The worker process died while running a task."""


class TaskOverran(RuntimeError):
    """The task ran past the deadline of every request in it; its worker was killed and is being replaced."""


class PoolStartError(RuntimeError):
    """A worker could not load its models, or not within the start-up bound."""


@dataclass(eq=False)
class WorkerProcess:
    """The pool's handle on one inference process (which runs yoso.serving.worker.Worker)."""

    process: BaseProcess
    ready: asyncio.Future[WorkerReady]
    socket: socket.socket
    writer: asyncio.StreamWriter | None = None  # set once the loop has opened the socket
    listener: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference to a task
    task: asyncio.Future[TaskOutcome] | None = None
    task_kind: TaskKind = ("", 0, 0)  # of the task running or last run
    task_started: float = 0.0  # time.monotonic()
    watchdog: asyncio.TimerHandle | None = None  # kills the worker at its start-up bound, then at its task's deadline
    killed: Exit | None = None  # set when the pool kills it: whatever it still sends is ignored
    models: set[str] = field(default_factory=set)

    @property
    def live(self) -> bool:
        """Loaded its models and can take tasks."""
        return self.ready.done() and not self.ready.exception()

    def kill(self, reason: Exit) -> None:
        self.killed = reason
        self.process.kill()  # the socket then closes, and _on_exit answers and replaces


class WorkerPool:
    def __init__(self, size: int, config: WorkerConfig, startup_timeout_s: float) -> None:
        self.size = size
        self.config = config
        self.startup_timeout_s = startup_timeout_s
        self.on_idle: Callable[[], None] = lambda: None
        self.on_ready: Callable[[WorkerReady], None] = lambda ready: None
        self.on_model_loaded: Callable[[str, float], None] = lambda name, seconds: None
        self.on_task_done: Callable[[TaskKind, TaskOutcome, float], None] = lambda kind, outcome, seconds: None
        self.on_replaced: Callable[[Exit], None] = lambda reason: None
        self._workers: list[WorkerProcess] = []
        self._idle: list[WorkerProcess] = []
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

    def running(self) -> list[Running | None]:
        """One entry per worker that can take tasks: its task's kind and start, or None while it is idle."""
        return [None if w.task is None else Running(w.task_kind, w.task_started) for w in self._workers if w.live]

    def tasks(self) -> dict[int, Running]:
        """The task each busy worker runs, by the worker's pid."""
        return {w.process.pid: Running(w.task_kind, w.task_started) for w in self._workers if w.task is not None}

    def set_log_level(self, level: str) -> None:
        """Every worker logs at `level` (a YOSO_LOG_LEVEL name) from now on, and so does every replacement
        (self.config.log_level). A worker reads it between tasks: one busy with a task, once that task is done."""
        self.config = dataclasses.replace(self.config, log_level=level)
        for w in self._workers:
            if w.writer is not None and not w.writer.is_closing() and w.killed is None and not self._closing:
                w.writer.write(wire.encode(LogLevel(level)))

    async def start(self) -> None:
        """Start every worker and return once all have loaded and warmed the preload models."""
        started = [self._spawn() for _ in range(self.size)]
        await asyncio.gather(*(w.ready for w in started))

    def threads_for_next_task(self) -> int:
        """All cores for a task that runs alone; otherwise each worker's share, so cores are never oversubscribed."""
        return self.config.cores if self.busy == 0 else self.config.busy_threads

    def submit(self, task: Task, deadline: float) -> asyncio.Future[TaskOutcome]:
        """Run `task` on an idle worker (the caller checks `idle` first). Past `deadline` (time.monotonic()),
        when every caller has given up, a task still running is abandoned and its worker replaced."""
        chosen = self._idle.pop()
        loop = asyncio.get_running_loop()
        chosen.task = loop.create_future()
        chosen.task_kind = task.kind
        chosen.task_started = time.monotonic()
        chosen.watchdog = loop.call_later(max(0.0, deadline - chosen.task_started), self._overran, chosen)
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
            await _reap(w)
            self._on_exit(w)  # whatever it left unanswered is answered now (no replacement: closing)

    def _spawn(self) -> WorkerProcess:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        process = _SPAWN.Process(target=_run_worker, args=(theirs, self.config), name="yoso-worker", daemon=True)
        process.start()
        theirs.close()
        w = WorkerProcess(process, loop.create_future(), ours)
        self._workers.append(w)
        w.listener = loop.create_task(self._listen(w, self.config.log_level), name=f"yoso-worker-{process.pid}")
        w.watchdog = loop.call_later(self.startup_timeout_s, self._start_overdue, w)
        return w

    async def _listen(self, w: WorkerProcess, spawned_at: str) -> None:
        """Every message of one worker, in order, until its socket closes; then the worker is gone.
        (`spawned_at`: the log level the worker was started with; the level may have changed since.)"""
        try:
            reader, w.writer = await asyncio.open_unix_connection(sock=w.socket)
            if self.config.log_level != spawned_at:
                w.writer.write(wire.encode(LogLevel(self.config.log_level)))
            while True:
                self._on_message(w, await wire.read(reader))
        except (asyncio.IncompleteReadError, OSError):
            pass
        except Exception:  # a message that cannot be read or handled: the worker's state is unknown
            log.exception("inference worker %s sent a message that failed; replacing the worker", w.process.pid)
            w.kill(Exit.died)
        self._on_exit(w)
        if not self._closing:  # stop() reaps the workers it stops
            await _reap(w)

    def _on_message(self, w: WorkerProcess, message: object) -> None:
        if w not in self._workers or w.killed is not None:
            return
        if isinstance(message, WorkerReady):
            if w.ready.done():  # its start was given up: the pool stops before it finished starting
                return
            w.watchdog.cancel()
            w.models.update(message.model_load_s)
            for name, seconds in message.model_load_s.items():
                self.on_model_loaded(name, seconds)
            self.on_ready(message)
            w.ready.set_result(message)
            self._failed_starts = 0
            self._make_idle(w)
        elif isinstance(message, WorkerFailed):
            if not w.ready.done():
                w.ready.set_exception(PoolStartError(message.message))
        elif isinstance(message, TaskOutcome):
            w.watchdog.cancel()
            task, w.task = w.task, None
            model = w.task_kind[0]
            if message.model_load_s is not None:
                w.models.add(model)
                self.on_model_loaded(model, message.model_load_s)
            self.on_task_done(w.task_kind, message, time.monotonic() - w.task_started)  # even if callers left
            if task is not None and not task.done():
                task.set_result(message)
            self._make_idle(w)

    def _make_idle(self, w: WorkerProcess) -> None:
        self._idle.append(w)
        self.on_idle()

    def _start_overdue(self, w: WorkerProcess) -> None:
        if not w.ready.done():
            w.ready.set_exception(PoolStartError(
                f"a worker did not load its models within {self.startup_timeout_s:g} s (YOSO_STARTUP_TIMEOUT_S)"))
            w.kill(Exit.start_timeout)

    def _overran(self, w: WorkerProcess) -> None:
        if w.task is None or w.task.done():
            return
        seconds = time.monotonic() - w.task_started
        log.error("inference worker %s has run one task for %.1f s, past the deadline of every request in it; "
                  "killing and replacing it", w.process.pid, seconds)
        w.task.set_exception(TaskOverran(f"the inference worker ran this task for {seconds:.1f} s and was replaced"))
        w.kill(Exit.hung)

    def _on_exit(self, w: WorkerProcess) -> None:
        """A worker is gone: answer its task, forget it, and start a replacement."""
        if w not in self._workers:
            return
        _close(w)
        if w.watchdog is not None:
            w.watchdog.cancel()
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
        self.on_replaced(w.killed or Exit.died)
        delay = RESPAWN_DELAYS_S[min(self._failed_starts, len(RESPAWN_DELAYS_S) - 1)]
        if w.killed is None:
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


async def _reap(w: WorkerProcess) -> None:
    """Wait for a worker whose socket has closed to exit, so that no zombie is left; kill it if it lingers."""
    await asyncio.to_thread(w.process.join, EXIT_WAIT_S)
    if w.process.is_alive():
        w.process.kill()
        await asyncio.to_thread(w.process.join, EXIT_WAIT_S)


def _close(w: WorkerProcess) -> None:
    if w.writer is not None:
        w.writer.close()
    else:
        w.socket.close()


def _run_worker(server: socket.socket, config: WorkerConfig) -> None:
    """A worker process's entry: OpenCV and the models load there, never in the server process."""
    from yoso.serving.worker import serve

    serve(server, config)
