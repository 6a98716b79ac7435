"""One inference worker process as the pool sees it: its handle, why it may go, and how it is reaped."""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.process import BaseProcess

from yoso.serving.tasks import ModelEntry, TaskKind, TaskOutcome, WorkerConfig, WorkerReady

SPAWN = multiprocessing.get_context("spawn")  # never fork a process that holds threads
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


class VersionRefused(RuntimeError):
    """A new version of a model could not be loaded and warmed in every worker: the old one keeps serving."""


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
    entries: dict[str, ModelEntry] = field(default_factory=dict)  # each model's version when it was started
    versions: set[tuple[str, int]] = field(default_factory=set)  # (model, version) loaded in it
    loads: deque[tuple[ModelEntry, asyncio.Future[float]]] = field(default_factory=deque)  # to load between tasks

    @property
    def live(self) -> bool:
        """Loaded its models and can take tasks."""
        return self.ready.done() and not self.ready.exception()

    def kill(self, reason: Exit) -> None:
        self.killed = reason
        self.process.kill()  # the socket then closes, and _on_exit answers and replaces


async def reap(w: WorkerProcess) -> None:
    """Wait for a worker whose socket has closed to exit, so that no zombie is left; kill it if it lingers."""
    await asyncio.to_thread(w.process.join, EXIT_WAIT_S)
    if w.process.is_alive():
        w.process.kill()
        await asyncio.to_thread(w.process.join, EXIT_WAIT_S)


def close(w: WorkerProcess) -> None:
    if w.writer is not None:
        w.writer.close()
    else:
        w.socket.close()


def run_worker(server: socket.socket, config: WorkerConfig) -> None:
    """A worker process's entry: OpenCV and the models load there, never in the server process."""
    from yoso.serving.worker import serve

    serve(server, config)
