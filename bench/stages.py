"""In-process timings of the engines: inference alone, and each stage of one request.

- `inference_alone`: `engine.forward` on one blob prepared once, on one thread, after a warm-up pass: the
  engines' own speed, with nothing of decoding, resizing or post-processing. The engines take turns in short
  slices, so that the host's speed, which drifts within minutes, weighs on each alike.
- `request_stages`: what a worker does for one image, stage by stage, as yoso.model.detector does it: decode
  (imaging.decode), resize + blob (cv2.dnn.blobFromImages), inference (engine.forward), post-processing
  (per-row argmax, boxes, NMS), with the threads a lone request gets in the server (all the cores).
  `stages_in_own_process` runs it where no other engine is loaded: an engine's idle threads slow the next
  engine's multi-threaded passes in the same process.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import dataclass

import cv2
import numpy as np

from yoso import imaging
from yoso.model.detector import DetectionModel, blob_of
from yoso.model.engines import Engine
from yoso.model.store import ModelFiles

SLICE_S = 0.25  # each engine's turn in inference_alone
STAGES = ("decode", "resize + blob", "inference", "post-processing")


@dataclass(frozen=True)
class InferenceTiming:
    runs: int
    median_ms: float
    images_per_s: float  # runs / the time they took


def inference_alone(engines: dict[str, Engine], blob: np.ndarray, seconds: float) -> dict[str, InferenceTiming]:
    """Each engine's forward pass on `blob`, one thread, for `seconds` of its own (taken in turns)."""
    timings: dict[str, list[float]] = {label: [] for label in engines}
    for engine in engines.values():
        engine.set_threads(1)
        engine.forward(blob)  # warm-up: first-pass allocations and tuning stay out of the figures
    while min(sum(spent) for spent in timings.values()) < seconds:
        for label, engine in engines.items():
            engine.set_threads(1)  # OpenCV's thread count is process-wide: each turn sets its own again
            spent = timings[label]
            turn_ends = time.perf_counter() + SLICE_S
            while (started := time.perf_counter()) < turn_ends:
                engine.forward(blob)
                spent.append(time.perf_counter() - started)
    return {label: InferenceTiming(len(spent), statistics.median(spent) * 1000, len(spent) / sum(spent))
            for label, spent in timings.items()}


def request_stages(model: DetectionModel, images: list[bytes], threads: int, passes: int,
                   confidence: float = 0.5) -> dict[str, float]:
    """The median milliseconds of each stage (STAGES) over `passes` passes on every image, on `threads`."""
    cv2.setNumThreads(threads)  # as the server's worker does for a task: decode and resize use them too
    model.engine.set_threads(threads)
    model.warm_up()
    timings: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(passes):
        for data in images:
            marks = [time.perf_counter()]
            image = imaging.decode(data)
            marks.append(time.perf_counter())
            blob = blob_of([image], model.input_size)
            marks.append(time.perf_counter())
            outputs = model.engine.forward(blob)
            marks.append(time.perf_counter())
            model.postprocess([out[0] for out in outputs], image.shape[:2], confidence)
            marks.append(time.perf_counter())
            for stage, start, end in zip(STAGES, marks, marks[1:]):
                timings[stage].append(end - start)
    return {stage: statistics.median(spent) * 1000 for stage, spent in timings.items()}


def _stages_main(name: str, files: ModelFiles, engine: str, precision: str, images: list[bytes], threads: int,
                 passes: int) -> dict[str, float]:
    from bench.raw import load_model

    return request_stages(load_model(name, files, threads, engine, precision), images, threads, passes)


def stages_in_own_process(name: str, files: ModelFiles, engine: str, precision: str, images: list[bytes],
                          threads: int, passes: int) -> dict[str, float]:
    """`request_stages` of the model on `engine` at `precision`, in a process of its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_stages_main, (name, files, engine, precision, images, threads, passes))
