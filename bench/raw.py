"""The raw limit: decode + detect in-process, no HTTP, no queue, with the best layout of the cores, on one engine
at one precision (by default the settings', YOSO_ENGINE and YOSO_INFERENCE_PRECISION's, as the server runs)."""

from __future__ import annotations

import multiprocessing
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


@dataclass(frozen=True)
class RawResult:
    layout: str
    images_per_s: float


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


def one_net_all_cores(name: str, files: ModelFiles, images: list[bytes], cores: int, seconds: float,
                      engine: str | None = None, precision: str | None = None) -> RawResult:
    model = load_model(name, files, cores, engine, precision)
    started = time.perf_counter()
    done = _loop(model, images, seconds)
    return RawResult(f"1 net x {cores} threads", done / (time.perf_counter() - started))


def _process_main(name: str, files: ModelFiles, images: list[bytes], seconds: float, engine: str | None,
                  precision: str | None, start, results) -> None:
    model = load_model(name, files, 1, engine, precision)
    start.wait()
    results.put(_loop(model, images, seconds))


def nets_per_core(name: str, files: ModelFiles, images: list[bytes], cores: int, seconds: float,
                  engine: str | None = None, precision: str | None = None) -> RawResult:
    """One single-threaded net per core, each in its own process."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(cores + 1), context.Queue()
    job = (name, files, images, seconds, engine, precision, start, results)
    processes = [context.Process(target=_process_main, args=job) for _ in range(cores)]
    for process in processes:
        process.start()
    start.wait()
    started = time.perf_counter()
    done = sum(results.get() for _ in processes)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    return RawResult(f"{cores} processes x 1 thread", done / elapsed)
