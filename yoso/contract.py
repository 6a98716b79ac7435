"""The plug-in contract: bring a class, and yoso serves it with workers, batching, admission, metrics and traces.

    class RedBlobs(yoso.Detector):      # images in, detections out: /predict, /count_objects, /detect
        name = "red-blobs"              # in URLs, /models, metrics and traces (default: from the class name)
        labels = ["red"]                # optional: the labels it can return

        def __init__(self, min_area: int = 50): ...   # YOSO_MODEL_ARGS (JSON), in every worker process
        def setup(self, device: str) -> None: ...     # init phase: once per worker, before /readyz turns 200
        def predict(self, images): ...                # run phase: a batch of BGR uint8 arrays -> one list of
                                                      # yoso.Detection per image, in order

    class Doubler(yoso.Model):          # JSON in, JSON out: POST /v1/models/doubler:predict (KServe V1)
        def predict(self, instances: list) -> list: ...   # one prediction per instance, in order

Served with `YOSO_MODEL_CLASS=module:Class` (or `yoso serve module:Class`); the module is imported from the
working directory or PYTHONPATH, in the server process (to read `name` and `labels`) and in every worker.
Optional steps, called in sequence around `predict` and each timed as a stage (yoso_stage_seconds and a
span): `preprocess(batch) -> batch` and `postprocess(batch) -> batch`. A detector's step that takes a
`confidence` keyword gets the request's threshold, to skip weaker boxes early (yoso drops them in any case).
Raise `yoso.InputError` from any step for an input the model cannot take: that request gets 422.
`yoso.record(statistic, value)` from `setup` or any step puts a figure of the class's own into /metrics.

Optional hooks: `set_threads(count)`, told the threads a batch may use (all cores for a batch that runs
alone, one worker's share otherwise; OpenCV's are set already); `unavailable()` (a classmethod), why the
model cannot load now, or None; `files()` (a classmethod), the files it loads, which `yoso check` lists with
their sha256 (arguments naming a file are listed too); `engine` and `precision`, class attributes naming what
runs it and in what arithmetic ("openvino", "bf16": /models, labels of the model metrics, span attributes), and
`download_bytes()` (a classmethod), what `yoso models pull` fetches for it, for `yoso check` and /models.

Versions: with the model's files in the model repository (`$YOSO_MODEL_DIR/<name>/<version>/`), a `setup`
and an `unavailable` that take a `directory` keyword get the directory of the version they serve (and check):
yoso then serves the highest complete version and swaps in new ones as they arrive.

This module is imported by the user's code and by the server process: it stays free of heavy imports.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Detection", "Detector", "InputError", "Model", "Tensor", "record"]


@dataclass(frozen=True)
class Detection:
    """One object a detector found: plain data, light enough for the server process, which never loads OpenCV."""

    label: str
    confidence: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class Tensor:
    """A tensor a JSON model takes or returns over the Open Inference Protocol (`/v2/models/{name}/infer`, gRPC):
    `datatype` as the protocol spells it (FP32, INT64, BYTES...), `shape` with -1 for a size that varies. The
    first dimension is the batch: row i of each input is instance i; prediction i is row i of each output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class InputError(ValueError):
    """Raise it from any step for an input the model cannot take (a wrong shape, a missing field): that request
    is answered 422 with the message, and the other requests of its batch run again without it."""


class Model(ABC):
    """Any JSON in, JSON out. Subclass it, set `name`, and write `setup` and `predict`."""

    name: ClassVar[str] = ""  # empty: the class name in kebab case (RedBlobs -> red-blobs)
    inputs: ClassVar[Sequence[Tensor]] = ()  # its tensors over the Open Inference Protocol (see Tensor); with one
    outputs: ClassVar[Sequence[Tensor]] = ()  # input, an instance is a row; with several, {input name: row}; the same
    # for outputs. Undeclared: any one input tensor; one output, OUTPUT, BYTES: each prediction as JSON text.

    def setup(self, device: str) -> None:
        """The init phase: load weights, open sessions. Called once in each worker before it takes requests,
        with the device it runs on ("cpu"). Declare `setup(self, device, directory=None)` to be given the
        directory of the version it serves, in the model repository."""

    @abstractmethod
    def predict(self, instances: Any) -> Any:
        """The run phase: a batch of instances (as the scheduler built it) -> one prediction each, in order.
        (With `preprocess`, it gets what that returned; with `postprocess`, it returns what that takes.)"""

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this model cannot load now (files missing, say), or None when it can. Requests for it get 409
        with this text, and it is not loaded at start-up."""
        return None


class Detector(Model):
    """Images in, detections out. Subclass it, set `name` and `labels`, and write `setup` and `predict`."""

    labels: Sequence[str] | None = None  # the labels it can return, when known (setup may set self.labels)

    @abstractmethod
    def predict(self, images: Any) -> Any:
        """The run phase: a batch of BGR uint8 images (height x width x 3, `list[np.ndarray]`) -> the detections
        in each (`list[list[yoso.Detection]]`), in order. (With `preprocess`, it gets what that returned; with
        `postprocess`, it returns what that takes.)"""


def model_name(cls: type[Model]) -> str:
    """The name a class is served under: its `name`, else its class name in kebab case."""
    return cls.name or re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", cls.__name__).lower()


_records: list[tuple[str, float]] = []


def record(statistic: str, value: float) -> None:
    """Record a figure of the model's own (a step's time, a cache hit, a queue length): /metrics shows it as
    yoso_model_statistic{model, statistic} (count and sum). Call it from setup or any step."""
    _records.append((statistic, float(value)))


def take_records() -> list[tuple[str, float]]:
    """What `record` gathered since the last call (the worker sends it back with each batch)."""
    taken = list(_records)
    _records.clear()
    return taken
