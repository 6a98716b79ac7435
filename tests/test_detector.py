"""DetectionModel on the opencv engine against cvlib 0.2.7's own object-detection code, on the real models and
images: the same engine, so the same detections, to the last digit (tests/test_engines.py holds OpenVINO to it).

cvlib is a test-only dependency. `import cvlib` imports TensorFlow (through gender_detection), so its
object_detection module is loaded here on its own, from cvlib's installed package directory.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.support import DATA, EXPECTED_COUNTS, SAMPLE_IMAGES
from yoso.drawing import BoxPainter
from yoso.model.detector import DetectionModel
from yoso.model.engines import OpenCVEngine
from yoso.model.store import read_labels
from yoso.model.zoo import ZOO


def _cvlib_object_detection() -> types.ModuleType:
    spec = importlib.util.find_spec("cvlib")
    assert spec is not None and spec.origin is not None, "cvlib is a test dependency: make install-dev"
    package = types.ModuleType("cvlib")
    package.__path__ = [str(Path(spec.origin).parent)]
    saved = sys.modules.get("cvlib")
    sys.modules["cvlib"] = package
    try:
        return importlib.import_module("cvlib.object_detection")
    finally:
        if saved is not None:
            sys.modules["cvlib"] = saved


cvlib_detection = _cvlib_object_detection()
MODELS = sorted(EXPECTED_COUNTS)


@pytest.fixture(scope="module", params=MODELS)
def pair(request, model_store):
    """(yoso's DetectionModel, cvlib's YOLO) on the same files."""
    files = model_store.files(ZOO[request.param])
    ours = DetectionModel(request.param, OpenCVEngine(files), read_labels(files.names))
    theirs = cvlib_detection.YOLO(str(files.weights), str(files.cfg), str(files.names))
    return ours, theirs


def read(name: str) -> np.ndarray:
    return cv2.imread(str(DATA / name))


@pytest.mark.parametrize("image", SAMPLE_IMAGES)
def test_detections_are_identical_to_cvlib(pair, image):
    ours, theirs = pair
    boxes, labels, confidences = theirs.detect_objects(read(image), confidence=0.5, nms_thresh=0.3)
    found = ours.detect([read(image)], confidence=0.5)[0]
    assert [d.label for d in found] == labels
    assert [list(d.box) for d in found] == boxes
    assert [d.confidence for d in found] == confidences


@pytest.mark.parametrize("confidence", [0.1, 0.3, 0.8])
def test_identical_to_cvlib_at_other_confidences(pair, confidence):
    ours, theirs = pair
    for image in ("dog_person_horse.jpg", "fruits.jpg", "apples.jpg"):
        boxes, labels, confidences = theirs.detect_objects(read(image), confidence=confidence)
        found = ours.detect([read(image)], confidence=confidence)[0]
        assert [(d.label, list(d.box), d.confidence) for d in found] == list(zip(labels, boxes, confidences))


def test_counts_match_the_published_table(pair):
    ours, _ = pair
    for image in SAMPLE_IMAGES:
        found = ours.detect([read(image)], confidence=0.5)[0]
        counts: dict[str, int] = {}
        for detection in found:
            counts[detection.label] = counts.get(detection.label, 0) + 1
        assert counts == EXPECTED_COUNTS[ours.name][image], image


def test_a_batch_gives_the_same_detections_as_single_images(pair):
    ours, _ = pair
    images = [read(name) for name in SAMPLE_IMAGES]
    batched = ours.detect(images, confidence=0.5)
    for image, found in zip(images, batched):
        single = ours.detect([image], confidence=0.5)[0]
        assert [(d.label, d.box) for d in found] == [(d.label, d.box) for d in single]
        assert [d.confidence for d in found] == pytest.approx([d.confidence for d in single], abs=1e-4)


def test_drawing_matches_cvlibs_draw_bbox(pair):
    ours, _ = pair
    image = read("dog_person_horse.jpg")
    found = ours.detect([image], confidence=0.5)[0]
    painter = BoxPainter(ours.labels)
    cvlib_detection.classes = list(ours.labels)  # cvlib's draw_bbox looks colours up by its global labels
    expected = cvlib_detection.draw_bbox(
        image.copy(), [list(d.box) for d in found], [d.label for d in found], [d.confidence for d in found],
        colors=painter.colors, write_conf=True,
    )
    assert np.array_equal(painter.draw(image.copy(), found), expected)


def test_an_image_with_nothing_in_it_has_no_detections(pair):
    ours, _ = pair
    assert ours.detect([np.full((300, 400, 3), 127, np.uint8)], confidence=0.5) == [[]]
