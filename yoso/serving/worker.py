"""The inference worker process: its own nets, one task at a time, decode -> detect -> draw and encode.

Each worker is a separate process so that it can set OpenCV's (process-wide) thread count per task: all
cores for a request that runs alone, one share of the cores when every worker is busy.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import cv2

from yoso import imaging
from yoso.model.detector import DetectionModel
from yoso.model.store import ModelStore
from yoso.model.zoo import ZOO
from yoso.serving import wire
from yoso.serving.tasks import ImageOutcome, Task, TaskKind, TaskOutcome, WorkerConfig, WorkerFailed, WorkerReady

# Workers keep every core busy under load, and must never delay the server process, which accepts, sheds
# (503 in well under 5 ms) and answers meanwhile. Under SCHED_IDLE (Linux) any waking ordinary process takes
# a worker's core at once; at nice 10 it waited for the worker's time slice to end, up to a 4 ms tick.
# YOSO_WORKER_PRIORITY=normal leaves workers at normal priority, for hosts shared with other busy processes.
WORKER_NICENESS = 10  # where SCHED_IDLE does not exist


class ModelCache:
    """One DetectionModel per model name, loaded on first use and kept."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: dict[str, DetectionModel] = {}

    def load(self, name: str) -> float:
        started = time.perf_counter()
        spec = ZOO[name]
        files = self.store.files(spec)
        if files is None:
            raise LookupError(f"model {name} is not installed in {self.store.model_dir}")
        model = DetectionModel(name, files, spec.input_size)
        model.warm_up()
        self.models[name] = model
        return time.perf_counter() - started


class Worker:
    def __init__(self, models: ModelCache, max_pixels: int) -> None:
        self.models = models
        self.max_pixels = max_pixels
        self.threads = -1

    def run(self, task: Task) -> TaskOutcome:
        if task.threads != self.threads:
            cv2.setNumThreads(task.threads)
            self.threads = task.threads
        load_s = None if task.model in self.models.models else self.models.load(task.model)
        model = self.models.models[task.model]
        outcomes = [ImageOutcome() for _ in task.images]
        images = {}
        for i, data in enumerate(task.images):
            started = time.time_ns()
            try:
                imaging.inspect(data, self.max_pixels)  # the header first: a pixel bomb is never decoded
                images[i] = imaging.decode(data)
            except imaging.ImageError as error:
                outcomes[i].error = (error.status, str(error))
                continue
            outcomes[i].decode = (started, time.time_ns())
            outcomes[i].height, outcomes[i].width = images[i].shape[:2]
        result = TaskOutcome(outcomes, model_load_s=load_s)
        if not images:
            return result
        started = time.time_ns()
        detections = model.detect(list(images.values()), task.confidence)
        result.inference = (started, time.time_ns())
        for (i, image), found in zip(images.items(), detections):
            outcomes[i].detections = found
            if task.annotate:
                outcomes[i].jpeg, outcomes[i].encode = self._annotate(model, image, found)
        return result

    @staticmethod
    def _annotate(model: DetectionModel, image, found) -> tuple[bytes, tuple[int, int]]:
        started = time.time_ns()
        jpeg = imaging.encode_jpeg(model.draw(image, found))
        return jpeg, (started, time.time_ns())


def _yield_to_the_server() -> None:
    """Run at the lowest CPU priority: compute with whatever the server process leaves."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # threads started later inherit it
    else:
        os.nice(WORKER_NICENESS)


def _warm_task_s(models: ModelCache, thread_counts: set[int]) -> dict[TaskKind, float]:
    """One blank image through each loaded model at each thread count: a first estimate of a task's time,
    so that admission knows what a worker can do before the first request has run."""
    timings = {}
    for threads in sorted(thread_counts):
        cv2.setNumThreads(threads)
        for name, model in models.models.items():
            started = time.perf_counter()
            model.warm_up()
            timings[(name, threads, 1)] = time.perf_counter() - started
    return timings


def serve(server: socket.socket, config: WorkerConfig) -> None:
    """Entry point of a worker process: load, report ready, then answer tasks until the server closes the socket."""
    # The server decides when workers stop (it closes their socket): a signal sent to the whole process group,
    # Ctrl-C in a terminal or SIGTERM from systemd or a supervisor, must not cut short the tasks of its drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.idle_priority:
        _yield_to_the_server()
    cv2.setNumThreads(config.cores)
    try:
        _load_then_answer(server, ModelCache(ModelStore(config.model_dir)), config)
    except (EOFError, OSError):  # the server has finished with this worker, or is gone
        return


def _load_then_answer(server: socket.socket, models: ModelCache, config: WorkerConfig) -> None:
    try:
        loaded = {name: models.load(name) for name in config.preload}
        warm_task_s = _warm_task_s(models, {config.busy_threads, config.cores})
    except Exception as error:  # noqa: BLE001 - reported to the server, which refuses to start
        wire.send(server, WorkerFailed(f"{type(error).__name__}: {error}"))
        return
    wire.send(server, WorkerReady(os.getpid(), loaded, warm_task_s))
    worker = Worker(models, config.max_pixels)
    while True:
        task: Task = wire.receive(server)
        try:
            outcome = worker.run(task)
        except Exception as error:  # noqa: BLE001 - a failed task is answered, the worker lives on
            message = f"inference failed: {type(error).__name__}: {error}"
            outcome = TaskOutcome([ImageOutcome(error=(500, message)) for _ in task.images])
        wire.send(server, outcome)
