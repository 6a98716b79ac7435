"""A model class at work in a worker: its steps run in sequence and timed, its results checked and tidied.

`preprocess`, `predict` and `postprocess` (those the class defines) run in that order on the batch the
scheduler built, each timed as a stage. What comes back must hold one result per input: a detector's, a
list of yoso.Detection per image (boxes rounded to whole pixels, weaker than the request's threshold
dropped); a JSON model's, one JSON value per instance (NumPy arrays and scalars become lists and numbers).
Anything else is a ModelError naming the model and the step.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

from yoso.contract import Detection, Detector, InputError, Model
from yoso.drawing import BoxPainter
from yoso.serving.tasks import Interval

STEPS = ("preprocess", "predict", "postprocess")


class ModelError(RuntimeError):
    """A model class failed or broke the contract; the message names it and is safe to show a client."""


class InputRejected(ValueError):
    """A step raised yoso.InputError: an input of the batch is one the model cannot take (a 4xx)."""


class LoadedModel:
    def __init__(self, name: str, instance: Model) -> None:
        self.name = name
        self.instance = instance
        self.is_detector = isinstance(instance, Detector)
        self.steps = [(step, getattr(instance, step)) for step in STEPS if callable(getattr(instance, step, None))]
        self.told_confidence = {step for step, call in self.steps
                                if self.is_detector and "confidence" in inspect.signature(call).parameters}
        self.labels = list(getattr(instance, "labels", None) or []) or None  # set by the class, or by its setup
        self.painter = BoxPainter(self.labels) if self.is_detector else None
        self._threads = 0

    def set_threads(self, count: int) -> None:
        hook = getattr(self.instance, "set_threads", None)
        if hook is not None and count != self._threads:
            hook(count)
            self._threads = count

    def detect(self, images: list[Any], confidence: float) -> tuple[list[list[Detection]], list[tuple[str, Interval]]]:
        found, stages = self._run(images, confidence)
        return [self._detections(i, result, confidence) for i, result in enumerate(found)], stages

    def predict(self, instances: list[Any]) -> tuple[list[Any], list[tuple[str, Interval]]]:
        predictions, stages = self._run(instances, None)
        try:
            json.dumps(predictions, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ModelError(f"model {self.name}: predictions must be JSON values: {error}") from None
        return predictions, stages

    def _run(self, batch: list[Any], confidence: float | None) -> tuple[list[Any], list[tuple[str, Interval]]]:
        stages = []
        data: Any = batch
        for step, call in self.steps:
            started = time.time_ns()
            try:
                data = call(data, confidence=confidence) if step in self.told_confidence else call(data)
            except InputError as error:
                raise InputRejected(f"model {self.name} cannot take this input: {error}") from None
            except Exception as error:
                raise ModelError(f"model {self.name}: {step} raised {type(error).__name__}: {error}") from error
            stages.append((step, (started, time.time_ns())))
        results = _plain(data)
        if not isinstance(results, list) or len(results) != len(batch):
            got = f"{len(results)} results" if isinstance(results, list) else f"a {type(results).__name__}"
            raise ModelError(f"model {self.name}: {self.steps[-1][0]} returned {got} for {len(batch)} inputs; "
                             f"it must return one result per input, in order")
        return results, stages

    def _detections(self, i: int, result: Any, confidence: float) -> list[Detection]:
        if not isinstance(result, list) or not all(isinstance(d, Detection) for d in result):
            raise ModelError(f"model {self.name}: the result for image {i} is not a list of yoso.Detection")
        try:
            kept = [Detection(str(d.label), float(d.confidence), tuple(int(round(v)) for v in d.box))  # type: ignore[arg-type]
                    for d in result if d.confidence > confidence]
        except (TypeError, ValueError) as error:
            raise ModelError(f"model {self.name}: a detection in image {i} is malformed ({error}); "
                             f"box is (x1, y1, x2, y2) in pixels") from None
        if any(len(d.box) != 4 for d in kept):
            raise ModelError(f"model {self.name}: a box in image {i} is not (x1, y1, x2, y2)")
        return kept


def _plain(value: Any) -> Any:
    """NumPy arrays and scalars as Python lists and numbers, at any depth (what JSON and pickling expect)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return _plain(value.tolist())
    return value
