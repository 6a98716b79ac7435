"""What a served model's tensors are over the Open Inference Protocol, and how they map to yoso's inputs and
outcomes.

A detector takes `IMAGE`, BYTES `[B]`: B encoded images (JPEG, PNG, ...), one batch. It answers in the layout
TensorRT's EfficientNMS made common, padded to the most detections K of any image of the batch:
`num_detections` INT32 `[B, 1]`, `detection_boxes` FP32 `[B, K, 4]` (x1, y1, x2, y2 in the input's pixels),
`detection_scores` FP32 `[B, K]`, `detection_classes` INT32 `[B, K]` (the label's index; -1 in padding) and
`detection_labels` BYTES `[B, K]` ("" in padding).

A JSON model (yoso.Model) declares its tensors (yoso.Tensor): row i of each input is instance i, prediction
i is row i of each output; undeclared, it takes any one input and answers one output, OUTPUT.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any

from yoso.api.errors import ApiError
from yoso.api.oip.tensors import TensorData, flatten
from yoso.contract import Tensor
from yoso.serving.tasks import JobOutcome

IMAGE = Tensor("IMAGE", "BYTES", (-1,))
DETECTOR_OUTPUTS = (
    Tensor("num_detections", "INT32", (-1, 1)),
    Tensor("detection_boxes", "FP32", (-1, -1, 4)),
    Tensor("detection_scores", "FP32", (-1, -1)),
    Tensor("detection_classes", "INT32", (-1, -1)),
    Tensor("detection_labels", "BYTES", (-1, -1)),
)
DEFAULT_OUTPUT = Tensor("OUTPUT", "BYTES", (-1,))  # undeclared: each prediction as text (JSON but for text)


def images_of(inputs: list[TensorData], max_images: int) -> list[bytes]:
    """The encoded images of a detector's request: one IMAGE tensor, BYTES, shape [B] (or [B, 1])."""
    names = [tensor.name for tensor in inputs]
    if names != [IMAGE.name]:
        raise ApiError(400, f"A detector takes one input tensor, {IMAGE.name!r} (BYTES, shape [B]: B encoded "
                            f"images); the request has {names}.")
    [tensor] = inputs
    if tensor.datatype != "BYTES":
        raise ApiError(400, f"Input {IMAGE.name!r} is BYTES (encoded images), not {tensor.datatype}.")
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)) or tensor.shape[0] < 1:
        raise ApiError(400, f"Input {IMAGE.name!r} has shape [B] (B images, at least 1), not {tensor.shape}.")
    if tensor.shape[0] > max_images:
        raise ApiError(400, f"Input {IMAGE.name!r} holds {tensor.shape[0]} images; the limit is {max_images} "
                            "per request (YOSO_MAX_IMAGES_PER_REQUEST).")
    return [_image_bytes(i, value) for i, value in enumerate(tensor.values)]


def _image_bytes(index: int, value: bytes | str) -> bytes:
    """An image as sent: bytes (binary data, gRPC), or base64 text (the JSON `data` of a BYTES tensor)."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"Image {index} of {IMAGE.name!r} is JSON text that is not base64: send the "
                                "encoded image as base64, or as binary data.") from None
    if not value:
        raise ApiError(400, f"Image {index} of {IMAGE.name!r} is empty.")
    return value


def detection_outputs(jobs: Sequence[JobOutcome], labels: Sequence[str] | None) -> list[TensorData]:
    """The detector's output tensors for the images of one request, in order."""
    batch = len(jobs)
    most = max((len(job.detections) for job in jobs), default=0)
    index = {label: i for i, label in enumerate(labels or ())}
    counts, boxes, scores, classes, names = [], [], [], [], []
    for job in jobs:
        padding = most - len(job.detections)
        counts.append(len(job.detections))
        for detection in job.detections:
            boxes += [float(coordinate) for coordinate in detection.box]
            scores.append(detection.confidence)
            classes.append(index.get(detection.label, -1))
            names.append(detection.label.encode())
        boxes += [0.0] * 4 * padding
        scores += [0.0] * padding
        classes += [-1] * padding
        names += [b""] * padding
    values = (counts, boxes, scores, classes, names)
    shapes = ([batch, 1], [batch, most, 4], [batch, most], [batch, most], [batch, most])
    return [TensorData(spec.name, spec.datatype, shape, data)
            for spec, shape, data in zip(DETECTOR_OUTPUTS, shapes, values)]


def instances_of(inputs: list[TensorData], declared: Sequence[Tensor]) -> list[Any]:
    """A JSON model's instances: row i of each input (a dict of the rows when it declares several inputs)."""
    names = [tensor.name for tensor in inputs]
    expected = [spec.name for spec in declared]
    if declared and sorted(names) != sorted(expected):
        raise ApiError(400, f"The model takes the input tensors {expected}; the request has {names}.")
    if not declared and len(inputs) != 1:
        raise ApiError(400, f"The model takes one input tensor; the request has {names}.")
    for tensor in inputs:
        spec = next((spec for spec in declared if spec.name == tensor.name), None)
        if spec is not None and tensor.datatype != spec.datatype:
            raise ApiError(400, f"Input {tensor.name!r} is {spec.datatype}, not {tensor.datatype}.")
        if not tensor.shape or tensor.shape[0] < 1:
            raise ApiError(400, f"Input {tensor.name!r} needs a batch dimension first (shape [N, ...], N >= 1).")
    rows = {tensor.name: _rows(tensor) for tensor in inputs}
    batches = {len(r) for r in rows.values()}
    if len(batches) != 1:
        raise ApiError(400, f"The input tensors hold different numbers of instances: {sorted(batches)}.")
    if len(declared) <= 1:
        return next(iter(rows.values()))
    return [dict(zip(rows, row)) for row in zip(*rows.values())]


def _rows(tensor: TensorData) -> list[Any]:
    values = [value.decode(errors="replace") if isinstance(value, bytes) else value for value in tensor.values]
    for size in reversed(tensor.shape[1:]):
        values = [values[at:at + size] for at in range(0, len(values), size)] if size else []
    return values


def prediction_outputs(predictions: list[Any], declared: Sequence[Tensor]) -> list[TensorData]:
    """A JSON model's output tensors: prediction i is row i of each (a dict of rows when it declares several)."""
    specs = list(declared) or [DEFAULT_OUTPUT]
    if len(specs) == 1:
        return [_stacked(specs[0], predictions)]
    missing = [spec.name for spec in specs if not all(isinstance(p, dict) and spec.name in p for p in predictions)]
    if missing:
        raise ApiError(500, f"The model declares the outputs {[s.name for s in specs]}; a prediction lacks {missing}.")
    return [_stacked(spec, [prediction[spec.name] for prediction in predictions]) for spec in specs]


def _stacked(spec: Tensor, rows: list[Any]) -> TensorData:
    if spec is DEFAULT_OUTPUT:
        return TensorData(spec.name, spec.datatype, [len(rows)], [_text(row) for row in rows])
    shape = [len(rows), *_shape_of(rows[0] if rows else [])]
    values = list(flatten(rows))
    if len(values) != math.prod(shape):
        raise ApiError(500, f"Output {spec.name!r}: the predictions are not all of one shape.")
    if spec.datatype == "BYTES":
        values = [_text(value) for value in values]
    return TensorData(spec.name, spec.datatype, shape, values)


def _text(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))).encode()


def _shape_of(row: Any) -> list[int]:
    return [len(row), *_shape_of(row[0] if row else [])] if isinstance(row, list) else []
