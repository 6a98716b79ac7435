"""The inference worker process: its own model instances, one task at a time: decode -> the model's steps ->
draw and encode, for a detector; the model's steps on JSON instances, for a JSON model.

Each worker is a separate process so that it can set OpenCV's (process-wide) thread count per task: all
cores for a request that runs alone, one share of the cores when every worker is busy.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from yoso import imaging
from yoso.config import root_level
from yoso.contract import take_records
from yoso.logformat import WORKER_TEXT_FORMAT, JsonFormatter, resolved_service_name
from yoso.serving import wire
from yoso.serving.catalog import accepts_directory, import_class
from yoso.serving.runner import InputRejected, LoadedModel, ModelError
from yoso.serving.tasks import (JobOutcome, LoadVersion, LogLevel, ModelEntry, Task, TaskKind, TaskOutcome,
                                UnloadVersion, VersionLoaded, WorkerConfig, WorkerFailed, WorkerReady)

log = logging.getLogger(__name__)
DEVICE = "cpu"
WARM_UP_SHAPE = (416, 416, 3)  # a blank image the size the zoo's models take

# Workers keep every core busy under load, and must never delay the server process, which accepts, sheds
# (503 in well under 5 ms) and answers meanwhile. Under SCHED_IDLE (Linux) any waking ordinary process takes
# a worker's core at once; at nice 10 it waited for the worker's time slice to end, up to a 4 ms tick.
# YOSO_WORKER_PRIORITY=normal leaves workers at normal priority, for hosts shared with other busy processes.
WORKER_NICENESS = 10  # where SCHED_IDLE does not exist


class ModelCache:
    """The served model classes' instances, one per loaded version, each built, set up and warmed on first use
    (or when the server asks for a new version), then kept until the server drops that version."""

    def __init__(self, entries: dict[str, ModelEntry], thread_counts: set[int]) -> None:
        self.entries = entries  # each model's serving version when the worker started
        self.thread_counts = thread_counts  # what a task may ask for: a lone task's, a busy one's
        self.models: dict[tuple[str, int], LoadedModel] = {}
        self.setup_records: dict[str, list[tuple[str, float]]] = {}  # yoso.record in setup: sent with a first task

    def load(self, entry: ModelEntry) -> float:
        """Seconds to build, set up and warm the model; ModelError (naming it) if its class fails."""
        started = time.perf_counter()
        try:
            instance = import_class(entry.target)(**entry.args)
            if entry.directory is not None and accepts_directory(instance.setup):
                instance.setup(DEVICE, directory=Path(entry.directory))
            else:
                instance.setup(DEVICE)
        except Exception as error:
            version = f" (version {entry.version})" if entry.directory else ""  # one in the model repository
            why = " ".join(str(error).split())  # one line: OpenCV's errors end in a newline
            raise ModelError(f"model {entry.name}: setting up {entry.target}{version} failed: "
                             f"{type(error).__name__}: {why}") from error
        self.setup_records[entry.name] = take_records()
        model = LoadedModel(entry.name, instance)
        if model.is_detector:  # at each thread count: an engine that compiles per count does it now, not in a task
            threads = cv2.getNumThreads()
            for count in sorted(self.thread_counts):
                cv2.setNumThreads(count)
                model.set_threads(count)
                _warm_up(model)
            cv2.setNumThreads(threads)
            model.set_threads(threads)
            take_records()  # a blank image is no batch of the model's
        self.models[(entry.name, entry.version)] = model
        return time.perf_counter() - started

    def get(self, name: str, entry: ModelEntry | None) -> tuple[LoadedModel, float | None]:
        """The model at the version of `entry` (default: the one the worker started with), and the seconds it
        took to load when this call loaded it (a model first used, or a version that came while this worker
        was starting)."""
        entry = entry or self.entries[name]
        if (name, entry.version) in self.models:
            return self.models[(name, entry.version)], None
        seconds = self.load(entry)
        return self.models[(name, entry.version)], seconds

    def loaded(self, name: str) -> LoadedModel:
        """The model at the version the worker started with (preloaded)."""
        return self.models[(name, self.entries[name].version)]

    def unload(self, name: str, version: int) -> None:
        if self.models.pop((name, version), None) is not None:
            gc.collect()  # the old weights go now, not at some later collection
            _give_back_freed_memory()


class Worker:
    def __init__(self, models: ModelCache, max_pixels: int) -> None:
        self.models = models
        self.max_pixels = max_pixels
        self.threads = -1

    def run(self, task: Task) -> TaskOutcome:
        if task.threads != self.threads:
            cv2.setNumThreads(task.threads)
            self.threads = task.threads
        model, load_s = self.models.get(task.model, task.entry)
        model.set_threads(task.threads)
        try:
            result = self._detect(model, task) if model.is_detector else self._predict(model, task)
            result.records = self.models.setup_records.pop(task.model, []) + take_records()
        except InputRejected as rejected:
            if len(task.inputs) == 1:
                result = TaskOutcome([JobOutcome(error=(422, str(rejected)))], records=take_records())
            else:  # which request's input it was is unknown: each runs again alone, and only that one fails
                result = _merged([self.run(replace(task, inputs=(item,))) for item in task.inputs])
        result.model_load_s = load_s
        result.version = task.version
        return result

    def _detect(self, model: LoadedModel, task: Task) -> TaskOutcome:
        outcomes = [JobOutcome() for _ in task.inputs]
        images = {}
        for i, data in enumerate(task.inputs):
            started = time.time_ns()
            try:
                imaging.inspect(data, self.max_pixels)  # the header first: a pixel bomb is never decoded
                images[i] = imaging.decode(data)
            except imaging.ImageError as error:
                outcomes[i].error = (error.status, str(error))
                continue
            outcomes[i].decode = (started, time.time_ns())
            outcomes[i].height, outcomes[i].width = images[i].shape[:2]
        result = TaskOutcome(outcomes)
        if not images:
            return result
        detections, result.stages = model.detect(list(images.values()), task.confidence)
        result.inference = (result.stages[0][1][0], result.stages[-1][1][1])
        for (i, image), found in zip(images.items(), detections):
            outcomes[i].detections = found
            if task.annotate:
                started = time.time_ns()
                outcomes[i].jpeg = imaging.encode_jpeg(model.painter.draw(image, found))
                outcomes[i].encode = (started, time.time_ns())
        return result

    @staticmethod
    def _predict(model: LoadedModel, task: Task) -> TaskOutcome:
        instances = [instance for item in task.inputs for instance in item]
        predictions, stages = model.predict(instances)
        outcomes, start = [], 0
        for item in task.inputs:
            outcomes.append(JobOutcome(predictions=predictions[start:start + len(item)]))
            start += len(item)
        return TaskOutcome(outcomes, inference=(stages[0][1][0], stages[-1][1][1]), stages=stages)


def _yield_to_the_server() -> None:
    """Run at the lowest CPU priority: compute with whatever the server process leaves."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # threads started later inherit it
    else:
        os.nice(WORKER_NICENESS)


def _merged(outcomes: list[TaskOutcome]) -> TaskOutcome:
    """One outcome for a task run piecewise: its jobs in order, every step of every piece."""
    ran = [outcome.inference for outcome in outcomes if outcome.inference is not None]
    return TaskOutcome([job for outcome in outcomes for job in outcome.jobs],
                       inference=(ran[0][0], ran[-1][1]) if ran else None,
                       stages=[stage for outcome in outcomes for stage in outcome.stages],
                       records=[record for outcome in outcomes for record in outcome.records])


def _warm_up(model: LoadedModel) -> None:
    """The first run of a model allocates and tunes: pay for it before serving."""
    model.detect([np.zeros(WARM_UP_SHAPE, np.uint8)], confidence=0.5)


def _warm_task_s(models: ModelCache, thread_counts: set[int]) -> dict[TaskKind, float]:
    """One blank image through each loaded detector at each thread count: a first estimate of a task's time,
    so that admission knows what a worker can do before the first request has run."""
    timings = {}
    for threads in sorted(thread_counts):
        cv2.setNumThreads(threads)
        for (name, _), model in models.models.items():
            if model.is_detector:
                model.set_threads(threads)
                started = time.perf_counter()
                _warm_up(model)
                timings[(name, threads, 1)] = time.perf_counter() - started
    return timings


def _give_back_freed_memory() -> None:
    """glibc keeps what a dropped version freed for later allocations: without this, each swap grows the worker
    (measured: 354 -> 518 MB over 12 swaps of yolov3-tiny, flat at ~365 MB with it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def _load_version(models: ModelCache, entry: ModelEntry) -> VersionLoaded:
    """A new version loaded beside the serving one, or why it cannot be."""
    try:
        seconds = models.load(entry)
    except Exception as error:  # noqa: BLE001 - the version is refused; the worker serves on
        why = str(error) if isinstance(error, ModelError) else f"{type(error).__name__}: {error}"
        return VersionLoaded(entry.name, entry.version, 0.0, why)
    take_records()  # what setup and warm-up recorded: no batch of the model's
    return VersionLoaded(entry.name, entry.version, seconds)


def _configure_logging(config: WorkerConfig) -> None:
    """Lines to stderr, which is the server's (inherited), in the server's format and with this worker's pid."""
    handler = logging.StreamHandler()
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter(resolved_service_name(config.service_name), pid=True))
    else:
        handler.setFormatter(logging.Formatter(WORKER_TEXT_FORMAT))
    logging.basicConfig(handlers=[handler], force=True)
    _set_log_level(config.log_level)


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(root_level(level))


def serve(server: socket.socket, config: WorkerConfig) -> None:
    """Entry point of a worker process: load, report ready, then answer tasks until the server closes the socket."""
    _configure_logging(config)
    # The server decides when workers stop (it closes their socket): a signal sent to the whole process group,
    # Ctrl-C in a terminal or SIGTERM from systemd or a supervisor, must not cut short the tasks of its drain.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.idle_priority:
        _yield_to_the_server()
    cv2.setNumThreads(config.cores)
    try:
        _load_then_answer(server, ModelCache(config.models, {config.busy_threads, config.cores}), config)
    except (EOFError, OSError):  # the server has finished with this worker, or is gone
        return


def _load_then_answer(server: socket.socket, models: ModelCache, config: WorkerConfig) -> None:
    try:
        loaded = {name: models.load(config.models[name]) for name in config.preload}
        warm_task_s = _warm_task_s(models, {config.busy_threads, config.cores})
        take_records()  # what the model recorded on blank images: no batch of its
    except Exception as error:  # noqa: BLE001 - reported to the server, which refuses to start
        why = str(error) if isinstance(error, ModelError) else f"{type(error).__name__}: {error}"
        wire.send(server, WorkerFailed(why))
        return
    labels = {name: models.loaded(name).labels for name in loaded}
    wire.send(server, WorkerReady(os.getpid(), loaded, warm_task_s, labels))
    worker = Worker(models, config.max_pixels)
    while True:
        message = wire.receive(server)
        if isinstance(message, LogLevel):
            _set_log_level(message.level)
            continue
        if isinstance(message, LoadVersion):
            wire.send(server, _load_version(models, message.entry))
            continue
        if isinstance(message, UnloadVersion):
            models.unload(message.name, message.version)
            log.info("model %s: version %d unloaded", message.name, message.version)
            continue
        task: Task = message
        log.debug("task of %d inputs for model %s on %d threads", task.size, task.model, task.threads)
        try:
            outcome = worker.run(task)
        except Exception as error:  # noqa: BLE001 - a failed task is answered, the worker lives on
            log.exception("model %s failed on a batch of %d", task.model, task.size)  # the traceback, for the log
            detail = (str(error) if isinstance(error, ModelError)
                      else f"inference failed: {type(error).__name__}: {error}")
            outcome = TaskOutcome([JobOutcome(error=(500, detail)) for _ in task.inputs], records=take_records())
        wire.send(server, outcome)
