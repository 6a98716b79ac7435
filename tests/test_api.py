"""The HTTP API against a real server process, real models and real images."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from tests.support import EXPECTED_COUNTS, SAMPLE_IMAGES, image_bytes


def upload(name: str) -> dict:
    return {"file": (name, image_bytes(name), "image/jpeg")}


@pytest.mark.parametrize("model", sorted(EXPECTED_COUNTS))
@pytest.mark.parametrize("image", SAMPLE_IMAGES)
def test_count_objects_matches_cvlib_counts(client, model, image):
    response = client.post("/count_objects", params={"model": model}, files=upload(image))
    assert response.status_code == 200, response.text
    assert response.json() == {"items": EXPECTED_COUNTS[model][image]}


def test_default_model_and_confidence_are_yolov3_tiny_at_half(client):
    default = client.post("/count_objects", files=upload("fruits.jpg")).json()
    explicit = client.post("/count_objects", params={"model": "yolov3-tiny", "confidence": 0.5},
                           files=upload("fruits.jpg")).json()
    assert default == explicit == {"items": EXPECTED_COUNTS["yolov3-tiny"]["fruits.jpg"]}


def test_predict_returns_the_annotated_jpeg_at_the_input_size(client):
    response = client.post("/predict", files=upload("dog_person_horse.jpg"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    annotated = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(image_bytes("dog_person_horse.jpg"), np.uint8), cv2.IMREAD_COLOR)
    assert annotated.shape == original.shape
    assert np.abs(annotated.astype(int) - original.astype(int)).max() > 100  # boxes were drawn


def test_detect_returns_boxes_labels_confidences_and_timing(client):
    body = client.post("/detect", params={"model": "yolov4-tiny"}, files=upload("car2.jpg")).json()
    assert body["model"] == "yolov4-tiny" and body["confidence"] == 0.5
    assert (body["width"], body["height"]) == (275, 183)
    assert [d["label"] for d in body["detections"]] == ["car", "car"]
    for detection in body["detections"]:
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 < x2 <= 275 and 0 <= y1 < y2 <= 183
        assert 0.5 < detection["confidence"] <= 1
    assert body["inference_ms"] > 0


def test_a_higher_confidence_keeps_fewer_objects(client):
    low = client.post("/detect", params={"confidence": 0.2}, files=upload("fruits.jpg")).json()["detections"]
    high = client.post("/detect", params={"confidence": 0.9}, files=upload("fruits.jpg")).json()["detections"]
    assert len(high) < len(low)
    assert all(d["confidence"] > 0.9 for d in high)


def test_predict_says_what_it_drew_in_a_header(client):
    response = client.post("/predict", params={"model": "yolov4-tiny"}, files=upload("fruits.jpg"))
    assert json.loads(response.headers["x-yoso-counts"]) == EXPECTED_COUNTS["yolov4-tiny"]["fruits.jpg"]


def test_a_large_image_round_trips_through_the_worker_pipes(client):
    """Megabytes each way: larger than any pipe buffer, whichever event loop serves."""
    noise = np.random.default_rng(0).integers(0, 256, (2400, 3200, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and len(encoded) > 4_000_000
    response = client.post("/predict", files={"file": ("noise.jpg", encoded.tobytes(), "image/jpeg")})
    assert response.status_code == 200
    assert len(response.content) > 1_000_000
    assert cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR).shape == noise.shape
