"""The unit of work: what the server sends to an inference worker process and what comes back (all
picklable), and how a task running on a worker is seen from the server (Running)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yoso.contract import Detection

# (start, end) in time.time_ns(): a wall clock shared by all processes, so the server can turn a
# worker's stages into spans and metrics after the fact.
Interval = tuple[int, int]

TaskKind = tuple[str, int, int]
"""model, threads, requests (one image each for a detector): what decides how long a task takes, in the unit
admission and batching count."""


@dataclass(frozen=True)
class Running:
    """A task on a worker, as admission sees it."""

    kind: TaskKind
    started: float  # time.monotonic()
    then: TaskKind | None = None  # the task sent ahead to the same worker: it begins when this one ends


@dataclass(frozen=True)
class ModelEntry:
    """A served model as a worker builds it: `target` is `module:Class`, instantiated with `args`, set up with
    the directory of `version` in the model repository (None: the model has no directory there)."""

    name: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    directory: str | None = None


@dataclass(frozen=True)
class WorkerConfig:
    models: dict[str, ModelEntry]  # every served model, by name: loaded on first use
    preload: list[str]  # loaded, set up and warmed before the worker reports ready
    cores: int  # threads of a task that runs alone
    busy_threads: int  # threads of a task that runs beside busy workers: its share of the cores
    max_pixels: int
    idle_priority: bool
    log_level: str = "info"  # YOSO_LOG_LEVEL at start; the pool spawns replacements at the level last set
    log_format: str = "text"  # YOSO_LOG_FORMAT: text, or json
    service_name: str = "yoso"  # YOSO_SERVICE_NAME, in JSON lines


@dataclass(frozen=True)
class Task:
    """A batch for one worker, answered as one TaskOutcome: one input per request, for one model and confidence.
    A detector's input is an encoded image; a JSON model's is the list of instances of one request."""

    model: str
    confidence: float
    inputs: tuple[bytes | list[Any], ...]
    annotate: bool  # also return each image with its boxes drawn, as JPEG
    threads: int  # threads for this task: all cores when it runs alone
    entry: ModelEntry | None = None  # the model's version serving when the task left the queue (None: the first)

    @property
    def version(self) -> int:
        return 1 if self.entry is None else self.entry.version

    @property
    def size(self) -> int:
        """Images, or instances: what the model's batch holds."""
        return sum(1 if isinstance(item, bytes) else len(item) for item in self.inputs)

    @property
    def kind(self) -> TaskKind:
        return (self.model, self.threads, len(self.inputs))


@dataclass
class JobOutcome:
    """What one request's input became: an image's detections (and JPEG), or a list of predictions."""

    width: int = 0
    height: int = 0
    detections: list[Detection] = field(default_factory=list)
    jpeg: bytes | None = None
    predictions: list[Any] | None = None
    queue: Interval | None = None  # waiting for a worker, in the server (set by the scheduler)
    decode: Interval | None = None
    encode: Interval | None = None
    error: tuple[int, str] | None = None  # HTTP status and message for the client


@dataclass
class TaskOutcome:
    jobs: list[JobOutcome]
    inference: Interval | None = None  # the model's steps, from the first start to the last end
    stages: list[tuple[str, Interval]] = field(default_factory=list)  # each step: preprocess, predict, postprocess
    records: list[tuple[str, float]] = field(default_factory=list)  # yoso.record(statistic, value) calls
    model_load_s: float | None = None  # set when this task made the worker load the model
    version: int = 1  # of the model that ran it

    @property
    def inference_ms(self) -> float:
        return 0.0 if self.inference is None else (self.inference[1] - self.inference[0]) / 1e6


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    model_load_s: dict[str, float]
    warm_task_s: dict[TaskKind, float]  # one blank image through each preloaded detector, at each thread count
    labels: dict[str, list[str] | None] = field(default_factory=dict)  # each preloaded model's, once set up


@dataclass(frozen=True)
class LoadVersion:
    """From the server: load, set up and warm this version beside those loaded. Answered VersionLoaded."""

    entry: ModelEntry


@dataclass(frozen=True)
class VersionLoaded:
    name: str
    version: int
    seconds: float
    error: str | None = None  # why it could not load: the version is refused


@dataclass(frozen=True)
class UnloadVersion:
    """From the server: drop this version (no task uses it any more). Not answered."""

    name: str
    version: int


@dataclass(frozen=True)
class WorkerFailed:
    message: str


@dataclass(frozen=True)
class LogLevel:
    """From the server: log at `level` (a YOSO_LOG_LEVEL name) from now on. Not answered."""

    level: str
