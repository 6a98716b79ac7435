"""What the server sends to an inference worker process and what comes back (all picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from yoso.model.detector import Detection

# (start, end) in time.time_ns(): a wall clock shared by all processes, so the server can turn a
# worker's stages into spans and metrics after the fact.
Interval = tuple[int, int]


@dataclass(frozen=True)
class ImageJob:
    data: bytes
    annotate: bool  # also return the image with boxes drawn, as JPEG


@dataclass(frozen=True)
class Task:
    model: str
    confidence: float
    images: tuple[ImageJob, ...]
    threads: int  # OpenCV threads for this task: all cores when it runs alone


@dataclass
class ImageOutcome:
    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    jpeg: bytes | None = None
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


@dataclass(frozen=True)
class WorkerFailed:
    message: str
