"""The unit of work: what the server sends to an inference worker process and what comes back (all
picklable), and how a task running on a worker is seen from the server (Running)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yoso.model.detection import Detection

# (start, end) in time.time_ns(): a wall clock shared by all processes, so the server can turn a
# worker's stages into spans and metrics after the fact.
Interval = tuple[int, int]

TaskKind = tuple[str, int, int]
"""model, threads, images: what decides how long a task takes."""


@dataclass(frozen=True)
class Running:
    """A task on a worker, as admission sees it."""

    kind: TaskKind
    started: float  # time.monotonic()


@dataclass(frozen=True)
class WorkerConfig:
    model_dir: Path
    preload: list[str]
    cores: int  # threads of a task that runs alone
    busy_threads: int  # threads of a task that runs beside busy workers: its share of the cores
    max_pixels: int
    idle_priority: bool


@dataclass(frozen=True)
class Task:
    """A batch for one worker: encoded images of one model and confidence, answered as one TaskOutcome."""

    model: str
    confidence: float
    images: tuple[bytes, ...]
    annotate: bool  # also return each image with its boxes drawn, as JPEG
    threads: int  # OpenCV threads for this task: all cores when it runs alone

    @property
    def kind(self) -> TaskKind:
        return (self.model, self.threads, len(self.images))


@dataclass
class ImageOutcome:
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    jpeg: bytes | None = None
    queue: Interval | None = None  # waiting for a worker, in the server (set by the scheduler)
    decode: Interval | None = None
    encode: Interval | None = None
    error: tuple[int, str] | None = None  # HTTP status and message for the client


@dataclass
class TaskOutcome:
    images: list[ImageOutcome]
    inference: Interval | None = None
    model_load_s: float | None = None  # set when this task made the worker load the model

    @property
    def inference_ms(self) -> float:
        return 0.0 if self.inference is None else (self.inference[1] - self.inference[0]) / 1e6


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    model_load_s: dict[str, float]
    warm_task_s: dict[TaskKind, float]  # one blank image through each preloaded model, at each thread count


@dataclass(frozen=True)
class WorkerFailed:
    message: str
