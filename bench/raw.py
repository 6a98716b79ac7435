"""The raw limit: decode + detect in-process, no HTTP, no queue, with the best layout of the cores."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import dataclass

import cv2

from yoso import imaging
from yoso.model.detector import DetectionModel
from yoso.model.store import ModelFiles


@dataclass(frozen=True)
class RawResult:
    layout: str
    images_per_s: float


def _load(name: str, files: ModelFiles, threads: int) -> DetectionModel:
    cv2.setNumThreads(threads)
    model = DetectionModel(name, files)
    model.warm_up()
    return model


def _loop(model: DetectionModel, images: list[bytes], seconds: float) -> int:
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        model.detect([imaging.decode(images[done % len(images)])], confidence=0.5)
        done += 1
    return done


def single_image_latency_ms(name: str, files: ModelFiles, images: list[bytes], threads: int, runs: int = 40) -> float:
    """Median decode + detect time of one image on one net using `threads` cores."""
    model = _load(name, files, threads)
    timings = []
    for i in range(runs):
        started = time.perf_counter()
        model.detect([imaging.decode(images[i % len(images)])], confidence=0.5)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def one_net_all_cores(name: str, files: ModelFiles, images: list[bytes], cores: int, seconds: float) -> RawResult:
    model = _load(name, files, cores)
    started = time.perf_counter()
    done = _loop(model, images, seconds)
    return RawResult(f"1 net x {cores} threads", done / (time.perf_counter() - started))


def _process_main(name: str, files: ModelFiles, images: list[bytes], seconds: float, start, results) -> None:
    model = _load(name, files, 1)
    start.wait()
    results.put(_loop(model, images, seconds))


def nets_per_core(name: str, files: ModelFiles, images: list[bytes], cores: int, seconds: float) -> RawResult:
    """One single-threaded net per core, each in its own process."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(cores + 1), context.Queue()
    processes = [context.Process(target=_process_main, args=(name, files, images, seconds, start, results))
                 for _ in range(cores)]
    for process in processes:
        process.start()
    start.wait()
    started = time.perf_counter()
    done = sum(results.get() for _ in processes)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join()
    return RawResult(f"{cores} processes x 1 thread", done / elapsed)
