"""The raw limit: decode + detect in-process, no HTTP, no queue, with the best layout of the cores, on one engine
at one precision (by default the settings', YOSO_ENGINE and YOSO_INFERENCE_PRECISION's, as the server runs)."""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from dataclasses import dataclass

import click
import cv2

from yoso import imaging
from yoso.config import load_settings
from yoso.model.detector import DetectionModel
from yoso.model.engines import open_engine
from yoso.model.store import ModelFiles, ModelStore, read_labels
from yoso.model.yolo import Yolo
from yoso.model.zoo import ZOO

LOAD_TIMEOUT_S = 300.0  # to load, compile and warm a model up, at most


@dataclass(frozen=True)
class RawResult:
    layout: str
    images_per_s: float
    processes: int  # the layout: processes of one net each ...
    threads: int  # ... on this many threads


def installed_files(model: str) -> ModelFiles:
    """The model's verified files in YOSO_MODEL_DIR, or a one-line error saying how to install it."""
    files = ModelStore(load_settings().model_dir).files(ZOO[model])
    if files is None:
        raise click.ClickException(f"{model} is not installed: run `python -m yoso models pull {model}`")
    return files


def load_model(name: str, files: ModelFiles, threads: int, engine: str | None = None,
               precision: str | None = None) -> DetectionModel:
    """The model on `engine` at `precision` (default: the settings'), on `threads` cores, warmed up."""
    if engine is None or precision is None:  # as the server runs them
        engine, precision = Yolo.engine, Yolo.precision
    cv2.setNumThreads(threads)
    input_size = ZOO[name].input_size if name in ZOO else 416
    model = DetectionModel(name, open_engine(engine, precision, files, input_size), read_labels(files.names),
                           input_size)
    model.engine.set_threads(threads)
    model.warm_up()
    return model


def _loop(model: DetectionModel, images: list[bytes], seconds: float) -> int:
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        model.detect([imaging.decode(images[done % len(images)])], confidence=0.5)
        done += 1
    return done


def single_image_latency_ms(name: str, files: ModelFiles, images: list[bytes], threads: int, runs: int = 40,
                            engine: str | None = None, precision: str | None = None) -> float:
    """Median decode + detect time of one image on one net using `threads` cores."""
    model = load_model(name, files, threads, engine, precision)
    timings = []
    for i in range(runs):
        started = time.perf_counter()
        model.detect([imaging.decode(images[i % len(images)])], confidence=0.5)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


class RawNets:
    """A layout of the raw model, kept loaded between runs: `processes` processes, one net each on `threads`
    cores. A run then costs only its seconds, so that every phase of the benchmark can be bracketed by raw runs
    just before and after it (the host's speed drifts within a minute). Between runs the processes sleep."""

    def __init__(self, name: str, files: ModelFiles, images: list[bytes], processes: int, threads: int,
                 engine: str | None = None, precision: str | None = None) -> None:
        self.processes, self.threads = processes, threads
        nets = "1 net" if processes == 1 else f"{processes} processes"
        self.layout = f"{nets} x {threads} thread{'s' * (threads > 1)}"
        context = multiprocessing.get_context("spawn")
        self._start, self._counts = context.Barrier(processes + 1), context.Queue()
        self._orders = [context.Queue() for _ in range(processes)]
        job = (name, files, images, threads, engine, precision, self._start, self._counts)
        self._processes = [context.Process(target=_run_on_order, args=(*job, orders), daemon=True)
                           for orders in self._orders]
        for process in self._processes:
            process.start()
        for _ in self._processes:
            self._count(LOAD_TIMEOUT_S)  # each says it is loaded

    def run(self, seconds: float) -> RawResult:
        """Images per second over `seconds`, every net running at once."""
        for orders in self._orders:
            orders.put(seconds)
        self._start.wait(LOAD_TIMEOUT_S)
        started = time.perf_counter()
        done = sum(self._count(seconds + LOAD_TIMEOUT_S) for _ in self._processes)
        return RawResult(self.layout, done / (time.perf_counter() - started), self.processes, self.threads)

    def _count(self, timeout_s: float) -> int:
        try:
            return self._counts.get(timeout=timeout_s)
        except queue.Empty:
            raise RuntimeError(f"a raw-model process ({self.layout}) stopped answering") from None

    def close(self) -> None:
        for orders in self._orders:
            orders.put(None)
        for process in self._processes:
            process.join()

    def __enter__(self) -> RawNets:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _run_on_order(name: str, files: ModelFiles, images: list[bytes], threads: int, engine: str | None,
                  precision: str | None, start, counts, orders) -> None:
    model = load_model(name, files, threads, engine, precision)
    counts.put(0)
    while (seconds := orders.get()) is not None:
        start.wait()
        counts.put(_loop(model, images, seconds))


def every_layout(name: str, files: ModelFiles, images: list[bytes], cores: int, seconds: float,
                 engine: str | None = None, precision: str | None = None) -> list[RawResult]:
    """One run of each layout of the cores: one net on every core, then one single-threaded net per core."""
    results = []
    for processes, threads in ((1, cores), (cores, 1)):
        with RawNets(name, files, images, processes, threads, engine, precision) as nets:
            results.append(nets.run(seconds))
    return results


def best(layouts: list[RawResult]) -> RawResult:
    return max(layouts, key=lambda layout: layout.images_per_s)
