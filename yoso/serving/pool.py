"""Inference worker processes, seen from the server's event loop.

The pool starts the workers, waits until each has loaded and warmed its models, runs one task at a time on
each worker, and keeps every worker alive or replaced: a worker that dies is replaced and its task answered
with an error; a worker still loading past the start-up bound, or still running a task past the deadline of
every request in it, is killed and replaced the same way. When no worker is idle, a busy worker may have one
more task sent ahead: it begins the moment the running one ends, without waiting for the event loop to hear
of the end and answer (that left the cores idle about 2% of the time under load). The event loop itself reads
and writes each worker's socket (yoso.serving.wire): no thread hands a task or an outcome over, nor a log level.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import socket
import time
from collections.abc import Callable

from yoso.serving import wire
from yoso.serving.process import (SPAWN, Assigned, Exit, PoolStartError, TaskNotStarted, TaskOverran, VersionRefused,
                                  WorkerCrashed, WorkerProcess, close, log_failed_start, patience_s, reap,
                                  run_worker)
from yoso.serving.tasks import (LoadVersion, LogLevel, ModelEntry, Running, Task, TaskKind, TaskOutcome,
                                UnloadVersion, VersionLoaded, WorkerConfig, WorkerFailed, WorkerReady)

__all__ = ["Exit", "PoolStartError", "TaskNotStarted", "TaskOverran", "VersionRefused", "WorkerCrashed", "WorkerPool"]

log = logging.getLogger(__name__)
RESPAWN_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive start-up failures


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
        self.expected_s: Callable[[TaskKind], float] = lambda kind: 0.0  # how long a task of this kind takes
        self._workers: list[WorkerProcess] = []
        self._idle: list[WorkerProcess] = []
        self._closing = False
        self._failed_starts = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def free(self) -> int:
        """Tasks the pool takes now (submit): one per idle worker, or else one ahead of each busy worker's."""
        return len(self._idle) or (0 if self._closing else len(self._taking_ahead()))

    def _taking_ahead(self) -> list[WorkerProcess]:
        return [w for w in self._workers if w.takes_ahead(self.expected_s(w.task_kind))]

    @property
    def live(self) -> int:
        """Workers that have loaded their models and can take tasks."""
        return sum(1 for w in self._workers if w.live)

    def workers_with(self, model: str) -> int:
        return sum(1 for w in self._workers if model in w.models)

    def running(self) -> list[Running | None]:
        """One entry per worker that can take tasks: its task's kind and start (and the task sent ahead), or None
        while it is idle."""
        return [w.running for w in self._workers if w.live]

    def tasks(self) -> dict[int, Running]:
        """The task each busy worker runs, by the worker's pid."""
        return {w.process.pid: w.running for w in self._workers if w.task is not None}

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
        return self.config.busy_threads if any(w.task is not None for w in self._workers) else self.config.cores

    def submit(self, task: Task, deadline: float, on_start: Callable[[], None] = lambda: None
               ) -> asyncio.Future[TaskOutcome]:
        """Run `task` on an idle worker, else send it ahead to the busy worker that began its task first (the
        caller checks `free` first); `on_start()` when it begins. Past `deadline` (time.monotonic()), when every
        caller has given up, a task still running is abandoned and its worker replaced. A task sent ahead to a
        worker that goes before it begins fails TaskNotStarted."""
        assigned = Assigned(asyncio.get_running_loop().create_future(), task.kind, deadline, on_start)
        if self._idle:
            chosen = self._idle.pop()
            chosen.begin(assigned)
        else:
            chosen = min(self._taking_ahead(), key=lambda w: w.task_started)
            chosen.hold_ahead(assigned, self.expected_s(chosen.task_kind))
        chosen.writer.write(wire.encode(task))  # the transport sends what the socket cannot take yet
        return assigned.outcome

    async def stop(self) -> None:
        """End every worker's stream of tasks (a worker exits when it reads the end), then reap it. Only the
        server's direction is shut: a task still running is answered before its worker exits."""
        self._closing = True
        stopping = list(self._workers)  # each worker leaves self._workers as its socket closes
        for w in stopping:
            if w.writer is not None and not w.writer.is_closing():
                w.writer.write_eof()
            else:
                close(w)
        for w in stopping:
            await reap(w)
            self._on_exit(w)  # whatever it left unanswered is answered now (no replacement: closing)

    def _spawn(self) -> WorkerProcess:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        process = SPAWN.Process(target=run_worker, args=(theirs, self.config), name="yoso-worker", daemon=True)
        process.start()
        theirs.close()
        w = WorkerProcess(process, loop.create_future(), ours, entries=self.config.models)
        self._workers.append(w)
        w.connecting = loop.create_task(self._connect(w, self.config.log_level), name=f"yoso-worker-{process.pid}")
        w.watchdog = loop.call_later(self.startup_timeout_s, w.start_overdue, self.startup_timeout_s)
        return w

    async def _connect(self, w: WorkerProcess, spawned_at: str) -> None:
        """Read the worker's socket on the event loop: each message as it arrives, then its exit when the socket
        closes. (`spawned_at`: the log level it was started with; the level may have changed since.)"""
        frames = wire.Frames(functools.partial(self._opened, w, spawned_at), functools.partial(self._received, w),
                             functools.partial(self._closed, w))
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: frames, sock=w.socket)
        except OSError:
            self._closed(w)

    def _opened(self, w: WorkerProcess, spawned_at: str, transport: asyncio.WriteTransport) -> None:
        w.writer = transport  # before any message is read: one may send the worker a task
        if self.config.log_level != spawned_at:
            transport.write(wire.encode(LogLevel(self.config.log_level)))

    def _received(self, w: WorkerProcess, frame: bytearray) -> None:
        if w not in self._workers or w.killed is not None:
            return
        try:
            self._on_message(w, wire.decode(frame))
        except Exception:  # a message that cannot be read or handled: the worker's state is unknown
            log.exception("inference worker %s sent a message that failed; replacing the worker", w.process.pid)
            w.kill(Exit.died)

    def _closed(self, w: WorkerProcess) -> None:
        """The worker's socket has closed: the worker is gone (unless it was let go already)."""
        if w not in self._workers:
            return
        self._on_exit(w)
        if not self._closing:  # stop() reaps the workers it stops
            w.reaper = asyncio.ensure_future(reap(w))

    def _on_message(self, w: WorkerProcess, message: object) -> None:
        if isinstance(message, WorkerReady):
            if w.ready.done():  # its start was given up: the pool stops before it finished starting
                return
            w.watchdog.cancel()
            w.models.update(message.model_load_s)
            w.versions.update((name, w.entries[name].version) for name in message.model_load_s)
            for name, seconds in message.model_load_s.items():
                self.on_model_loaded(name, seconds)
            self.on_ready(message)
            w.ready.set_result(message)
            self._failed_starts = 0
            self._catch_up(w)
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
                w.versions.add((model, message.version))
                self.on_model_loaded(model, message.model_load_s)
            self.on_task_done(w.task_kind, message, time.monotonic() - w.task_started)  # even if callers left
            if task is not None and not task.done():
                task.set_result(message)
            if w.ahead is None:
                self._make_idle(w)
            else:  # the worker has begun it already: room for another task ahead
                w.begin(w.ahead, grace_s=patience_s(self.expected_s(w.ahead.kind)))
                self.on_idle()
        elif isinstance(message, VersionLoaded):
            w.watchdog.cancel()
            load, w.task = w.task, None
            if message.error is None:
                w.versions.add((message.name, message.version))
                self.on_model_loaded(message.name, message.seconds)
            if load is not None and not load.done():
                load.set_result(message.seconds) if message.error is None else load.set_exception(
                    VersionRefused(message.error))
            self._make_idle(w)

    def _make_idle(self, w: WorkerProcess) -> None:
        """The worker is free: it loads what versions wait for it (each as a task), then takes tasks."""
        if w.loads and not self._closing:
            entry, load = w.loads.popleft()  # admission's kind for a model load: threads 0
            w.begin(Assigned(load, (entry.name, 0, 0), time.monotonic() + self.startup_timeout_s, lambda: None))
            w.writer.write(wire.encode(LoadVersion(entry)))
            return
        self._idle.append(w)
        self.on_idle()

    def _catch_up(self, w: WorkerProcess) -> None:
        """A worker started before a swap loads the version serving now, then drops the one it started with."""
        for name, started_with in w.entries.items():
            serving = self.config.models[name]
            if (name, started_with.version) in w.versions and serving != started_with:
                load = asyncio.get_running_loop().create_future()
                load.add_done_callback(lambda done: done.exception())  # a failure shows on its first task instead
                w.loads.append((serving, load))
                w.writer.write(wire.encode(UnloadVersion(name, started_with.version)))
                w.versions.discard((name, started_with.version))

    async def load_everywhere(self, entry: ModelEntry) -> None:
        """Load, set up and warm `entry`'s version in every live worker that holds the model, beside what it
        serves: one worker at a time, each between its tasks, so that the others keep serving meanwhile (a
        worker without the model loads the version on first use). VersionRefused (and it is unloaded again)
        when a worker cannot."""
        for w in [w for w in self._workers if w.live and entry.name in w.models]:
            if w not in self._workers or w.killed is not None:
                continue  # gone meanwhile: its replacement loads the version on first use
            load = asyncio.get_running_loop().create_future()
            w.loads.append((entry, load))
            if w in self._idle:
                self._idle.remove(w)
                self._make_idle(w)
            try:
                await load
            except VersionRefused:
                self.unload_everywhere(entry.name, entry.version)
                raise
            except Exception as error:  # its worker died or hung while loading it
                self.unload_everywhere(entry.name, entry.version)
                raise VersionRefused(str(error)) from None

    def adopt(self, entry: ModelEntry) -> None:
        """From now on tasks run `entry`'s version, and workers started later load it."""
        self.config = dataclasses.replace(self.config, models={**self.config.models, entry.name: entry})

    def unload_everywhere(self, name: str, version: int) -> None:
        """Every worker drops the version, once its running task (if any) is done: told whether or not the pool
        knows it holds it (a task that loaded it lazily may still be running), since dropping nothing is free."""
        for w in self._workers:
            if w.writer is not None and not w.writer.is_closing() and w.killed is None:
                w.versions.discard((name, version))
                w.writer.write(wire.encode(UnloadVersion(name, version)))

    def _on_exit(self, w: WorkerProcess) -> None:
        """A worker is gone: answer its task, forget it, and start a replacement."""
        if w not in self._workers:
            return
        close(w)
        if w.watchdog is not None:
            w.watchdog.cancel()
        if w in self._idle:
            self._idle.remove(w)
        self._workers.remove(w)
        how = "" if w.process.exitcode is None else f" (exit code {w.process.exitcode})"
        if not w.ready.done():
            w.ready.set_exception(PoolStartError(f"a worker exited during start-up{how}"))
        if not w.live:  # its start failed, or was given up (cancelled)
            self._failed_starts += 1
        w.answer_unfinished(how)
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
        self._spawn().ready.add_done_callback(log_failed_start)
