"""Your own YOLOv8 / YOLO11 model, exported by Ultralytics to ONNX, served by yoso on OpenCV DNN.

    YOSO_MODEL_CLASS=examples.ultralytics_onnx:UltralyticsOnnx \
    YOSO_MODEL_ARGS='{"path": "best.onnx"}' python -m yoso.server

The export (`yolo export model=best.pt format=onnx`, add `dynamic=True` to batch) takes one RGB image
letterboxed into a square of `input_size` (grey 114 borders, values 0..1) and answers one tensor
[batch, 4 + classes, candidates]: per candidate its box (cx, cy, w, h in input pixels) and one score per class.
The three steps are yoso's three timed stages: letterbox (preprocess), the network (predict), and decode + NMS +
boxes back onto the original image (postprocess). Each image's letterbox travels through the batch with it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

import yoso

if TYPE_CHECKING:
    import onnx

PAD_GREY = (114, 114, 114)  # what Ultralytics fills the letterbox borders with


@dataclass
class Letterboxed:
    """One image on its way through the steps: the network's input, how the image was fitted into it, and
    (after predict) the network's raw answer."""

    pixels: np.ndarray  # 1 x 3 x size x size, RGB, 0..1
    scale: float  # network pixels per image pixel
    pad_x: int  # grey columns on the left
    pad_y: int  # grey rows on top
    width: int  # the original image's
    height: int
    output: np.ndarray | None = None  # (4 + classes) x candidates


class UltralyticsOnnx(yoso.Detector):
    """A YOLOv8/YOLO11 ONNX export: `path` to the .onnx; `labels` in class order (default: the names Ultralytics
    writes into the file's metadata); `input_size` as exported; `iou`, the overlap above which NMS keeps only the
    stronger of two boxes of one class."""

    name = "ultralytics-onnx"

    def __init__(self, path: str, labels: Sequence[str] | None = None, input_size: int = 640,
                 iou: float = 0.45) -> None:
        self.path = path
        self.labels = list(labels) if labels else None  # per instance: known only once the file is read
        self.input_size = input_size
        self.iou = iou
        self.batches = False  # whether the export takes a whole batch at once (dynamic=True)

    def setup(self, device: str) -> None:
        import onnx  # only to read the graph's input shape and metadata, not the weights

        graph = onnx.load(self.path, load_external_data=False)
        self.batches, exported_size = _input_shape(graph)
        if exported_size not in (None, self.input_size):
            raise ValueError(f"{self.path} takes {exported_size}x{exported_size} images: set \"input_size\": "
                             f"{exported_size} in YOSO_MODEL_ARGS")
        if self.labels is None:
            names = {entry.key: entry.value for entry in graph.metadata_props}.get("names")
            if names is None:
                raise ValueError(f"{self.path} names no classes in its metadata: pass \"labels\" in YOSO_MODEL_ARGS")
            by_index = ast.literal_eval(names)  # a dict literal such as "{0: 'person', 1: 'bicycle'}"; never eval
            self.labels = [str(by_index[i]) for i in sorted(by_index)]
        self.net = cv2.dnn.readNetFromONNX(self.path)

    def preprocess(self, images: list[np.ndarray]) -> list[Letterboxed]:
        return [self._letterbox(image) for image in images]

    def predict(self, batch: list[Letterboxed]) -> list[Letterboxed]:
        if self.batches:
            outputs = list(self._forward(np.concatenate([item.pixels for item in batch])))
        else:
            outputs = [self._forward(item.pixels)[0] for item in batch]
        for item, output in zip(batch, outputs):
            item.output = output
        return batch

    def postprocess(self, batch: list[Letterboxed], confidence: float = 0.25) -> list[list[yoso.Detection]]:
        """`confidence` is the request's threshold: weaker candidates never reach NMS."""
        return [self._detections(item, confidence) for item in batch]

    def _forward(self, pixels: np.ndarray) -> np.ndarray:
        self.net.setInput(pixels)
        return self.net.forward()

    def _letterbox(self, image: np.ndarray) -> Letterboxed:
        height, width = image.shape[:2]
        scale = min(self.input_size / height, self.input_size / width)
        resized_w, resized_h = round(width * scale), round(height * scale)
        pad_w, pad_h = (self.input_size - resized_w) / 2, (self.input_size - resized_h) / 2
        left, top = round(pad_w - 0.1), round(pad_h - 0.1)  # an odd pixel goes right and below, as Ultralytics puts it
        boxed = cv2.copyMakeBorder(cv2.resize(image, (resized_w, resized_h), interpolation=cv2.INTER_LINEAR),
                                   top, self.input_size - resized_h - top, left, self.input_size - resized_w - left,
                                   cv2.BORDER_CONSTANT, value=PAD_GREY)
        pixels = cv2.dnn.blobFromImage(boxed, scalefactor=1 / 255, swapRB=True)
        return Letterboxed(pixels, scale, left, top, width, height)

    def _detections(self, item: Letterboxed, confidence: float) -> list[yoso.Detection]:
        assert item.output is not None and self.labels is not None, "predict ran, setup read the labels"
        candidates = item.output.T  # candidates x (4 + classes)
        scores = candidates[:, 4:]
        classes, best = scores.argmax(axis=1), scores.max(axis=1)
        strong = best > confidence
        candidates, classes, best = candidates[strong], classes[strong], best[strong]
        cx, cy, w, h = candidates[:, :4].T
        corners = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)  # x, y, width, height: what NMS takes
        kept = cv2.dnn.NMSBoxesBatched(corners.tolist(), best.tolist(), classes.tolist(), confidence, self.iou)
        detections = []
        for i in np.asarray(kept, dtype=int).reshape(-1):
            x, y, bw, bh = corners[i]
            x1, x2 = np.clip([(x - item.pad_x) / item.scale, (x + bw - item.pad_x) / item.scale], 0, item.width)
            y1, y2 = np.clip([(y - item.pad_y) / item.scale, (y + bh - item.pad_y) / item.scale], 0, item.height)
            label = self.labels[classes[i]] if classes[i] < len(self.labels) else str(classes[i])
            detections.append(yoso.Detection(label, float(best[i]), (float(x1), float(y1), float(x2), float(y2))))
        return detections


def _input_shape(graph: onnx.ModelProto) -> tuple[bool, int | None]:
    """Whether the graph's batch dimension is dynamic, and its fixed image side (None when dynamic too)."""
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    batch, side = dims[0], dims[-1]
    return not batch.dim_value, (side.dim_value or None)
