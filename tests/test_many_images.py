"""Several images in one request, and images sent as base64 JSON: against a real server, models and images.

One image (one `file` part, or JSON `"image"`) is answered as it always was; several (`file` parts, or JSON
`"images"`) are answered `{"results": [...]}`, one entry per image in order, each what that image alone gets,
or `{"status", "detail"}` for an image the model could not take.
"""

from __future__ import annotations

import base64
import json
from collections import Counter

import pytest

from tests.support import DATA, EXPECTED_COUNTS, image_bytes
from yoso.config import load_settings
from yosoclient import Client, DetectResult, YosoError

SETTINGS = load_settings()  # what the session's server reads too (it sets neither limit)
NAMES = ["car2.jpg", "fruits.jpg", "dog_person_horse.jpg", "clock.jpg"]
NOT_AN_IMAGE = b"this is plain text, not a JPEG"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def file_parts(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    """`files=` for one `file` part per image, in order."""
    return [("file", (f"image{index}.jpg", data, "image/jpeg")) for index, data in enumerate(images)]


def untimed(answer: dict) -> dict:
    """A /detect answer without its inference time, which differs from run to run."""
    return {key: value for key, value in answer.items() if key != "inference_ms"}


def detect_alone(client, data: bytes, **params) -> dict:
    response = client.post("/detect", params=params, files=file_parts(data))
    assert response.status_code == 200, response.text
    return untimed(response.json())


def counts(answer: dict) -> Counter:
    return Counter(detection["label"] for detection in answer["detections"])


@pytest.mark.parametrize("model", sorted(EXPECTED_COUNTS))
def test_a_json_base64_image_gets_the_answer_of_the_same_image_uploaded(client, model):
    data = image_bytes("dog_person_horse.jpg")
    response = client.post("/detect", params={"model": model}, json={"image": b64(data)})
    assert response.status_code == 200, response.text
    assert untimed(response.json()) == detect_alone(client, data, model=model)
    assert counts(response.json()) == EXPECTED_COUNTS[model]["dog_person_horse.jpg"]


def test_several_file_parts_are_answered_in_order_each_as_the_image_alone(client):
    images = [image_bytes(name) for name in NAMES]
    response = client.post("/detect", files=file_parts(*images))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [untimed(result) for result in results] == [detect_alone(client, data) for data in images]
    assert [counts(result) for result in results] == [EXPECTED_COUNTS["yolov3-tiny"][name] for name in NAMES]


def test_json_images_are_answered_as_the_same_file_parts(client):
    images = [image_bytes(name) for name in reversed(NAMES)]
    response = client.post("/detect", params={"model": "yolov4-tiny"}, json={"images": [b64(d) for d in images]})
    uploaded = client.post("/detect", params={"model": "yolov4-tiny"}, files=file_parts(*images))
    assert response.status_code == uploaded.status_code == 200, response.text
    assert [untimed(r) for r in response.json()["results"]] == [untimed(r) for r in uploaded.json()["results"]]
    assert [counts(r) for r in response.json()["results"]] == [EXPECTED_COUNTS["yolov4-tiny"][name]
                                                               for name in reversed(NAMES)]


def test_json_images_with_one_image_are_still_a_list_of_results(client):
    data = image_bytes("car2.jpg")
    response = client.post("/detect", json={"images": [b64(data)]})
    assert response.status_code == 200, response.text
    assert [untimed(result) for result in response.json()["results"]] == [detect_alone(client, data)]


def test_one_file_part_keeps_the_single_image_answer(client):
    response = client.post("/count_objects", files=file_parts(image_bytes("fruits.jpg")))
    assert response.json() == {"items": EXPECTED_COUNTS["yolov3-tiny"]["fruits.jpg"]}


@pytest.mark.parametrize("send", ["file parts", "json"])
def test_a_part_that_is_not_an_image_is_an_error_entry_while_the_others_are_answered(client, send):
    images = [image_bytes("car2.jpg"), NOT_AN_IMAGE, image_bytes("fruits.jpg")]
    if send == "json":
        response = client.post("/detect", json={"images": [b64(data) for data in images]})
    else:
        response = client.post("/detect", files=file_parts(*images))
    assert response.status_code == 200, response.text
    first, error, last = response.json()["results"]
    assert untimed(first) == detect_alone(client, images[0])
    assert untimed(last) == detect_alone(client, images[2])
    assert error["status"] == 415 and "not an image" in error["detail"].lower(), error
    assert set(error) == {"status", "detail"}


def test_count_objects_answers_each_of_several_images(client):
    response = client.post("/count_objects", params={"model": "yolov4-tiny"},
                           files=file_parts(*(image_bytes(name) for name in NAMES), b""))
    assert response.status_code == 200, response.text
    *counted, empty = response.json()["results"]
    assert counted == [{"items": EXPECTED_COUNTS["yolov4-tiny"][name]} for name in NAMES]
    assert empty["status"] == 422 and "empty" in empty["detail"].lower(), empty


def test_count_objects_takes_a_json_image(client):
    response = client.post("/count_objects", json={"image": b64(image_bytes("oranges.jpg"))})
    assert response.json() == {"items": EXPECTED_COUNTS["yolov3-tiny"]["oranges.jpg"]}


def test_a_json_image_the_model_cannot_take_is_answered_as_an_upload_would_be(client):
    response = client.post("/detect", json={"image": b64(NOT_AN_IMAGE)})
    assert response.status_code == 415 and "not an image" in response.json()["detail"].lower(), response.text


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word.lower() in detail.lower(), detail


@pytest.mark.parametrize("endpoint", ["/detect", "/count_objects"])
def test_more_file_parts_than_the_limit_is_422(client, endpoint):
    images = [image_bytes("car1.jpg")] * (SETTINGS.max_images_per_request + 1)
    assert_error(client.post(endpoint, files=file_parts(*images)), 422, "YOSO_MAX_IMAGES_PER_REQUEST")


def test_as_many_file_parts_as_the_limit_are_answered(client):
    images = [image_bytes("car1.jpg")] * SETTINGS.max_images_per_request
    response = client.post("/count_objects", files=file_parts(*images))
    assert response.json() == {"results": [{"items": {"car": 1}}] * SETTINGS.max_images_per_request}


def test_more_json_images_than_the_limit_is_422(client):
    images = [b64(image_bytes("car1.jpg"))] * (SETTINGS.max_images_per_request + 1)
    assert_error(client.post("/detect", json={"images": images}), 422, "YOSO_MAX_IMAGES_PER_REQUEST")


@pytest.mark.parametrize("body, where", [
    ({"image": "this is not base64!"}, "image"),
    ({"image": b64(image_bytes("car2.jpg"))[:-1]}, "image"),  # lost its last character: bad padding
    ({"images": [b64(image_bytes("car2.jpg")), "%%%%"]}, "images[1]"),
], ids=["characters", "padding", "second-of-two"])
def test_base64_that_does_not_decode_is_422_saying_which_image(client, body, where):
    assert_error(client.post("/detect", json=body), 422, "base64", where)


@pytest.mark.parametrize("body", [{}, {"picture": "x"}, {"image": "", "images": [""]}, {"images": []},
                                  {"images": "abc"}, {"image": 3}, ["abc"]],
                         ids=["empty", "other-key", "both", "no-images", "images-a-string", "image-a-number", "list"])
def test_a_json_body_without_image_or_images_is_a_clear_422(client, body):
    assert_error(client.post("/detect", json=body), 422, "image")


def test_a_body_that_is_not_json_is_422(client):
    response = client.post("/detect", content=b'{"image": ', headers={"content-type": "application/json"})
    assert_error(response, 422, "not json")


def test_a_json_body_over_the_size_limit_is_413_from_its_content_length(client):
    body = json.dumps({"image": "A" * SETTINGS.max_upload_bytes}).encode()
    response = client.post("/detect", content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "limit")


def test_a_json_body_over_the_size_limit_is_413_as_it_arrives_without_a_content_length(client):
    def chunks():  # a generator: httpx sends it chunked, without Content-Length
        yield b'{"image": "'
        for _ in range(SETTINGS.max_upload_bytes // (1024 * 1024) + 1):
            yield b"A" * (1024 * 1024)
        yield b'"}'

    response = client.post("/detect", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit")


def test_file_parts_over_the_size_limit_together_are_413(client):
    part = b"\xff" * (SETTINGS.max_upload_bytes // 2 + 1)
    assert_error(client.post("/detect", files=file_parts(part, part)), 413, "limit")


def test_predict_takes_a_json_image(client):
    data = image_bytes("dog_person_horse.jpg")
    response = client.post("/predict", json={"image": b64(data)})
    uploaded = client.post("/predict", files=file_parts(data))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content == uploaded.content
    assert json.loads(response.headers["x-yoso-counts"]) == EXPECTED_COUNTS["yolov3-tiny"]["dog_person_horse.jpg"]


@pytest.mark.parametrize("send", ["file parts", "json"])
def test_predict_refuses_several_images_saying_where_to_send_them(client, send):
    images = [image_bytes("car2.jpg"), image_bytes("fruits.jpg")]
    if send == "json":
        response = client.post("/predict", json={"images": [b64(data) for data in images]})
    else:
        response = client.post("/predict", files=file_parts(*images))
    assert_error(response, 422, "/detect")


def test_the_openapi_schema_documents_json_bodies_and_lists_of_results(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/detect", "/count_objects", "/predict"):
        assert set(paths[path]["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    answers = paths["/detect"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/DetectResults"} in answers


def test_the_client_detects_several_images_in_one_request_with_errors_in_place(server, client):
    with Client(server.url, timeout=60) as yoso:
        first, error, last = yoso.detect_many([DATA / "car2.jpg", NOT_AN_IMAGE, image_bytes("fruits.jpg")])
        [alone] = yoso.detect_many([DATA / "oranges.jpg"])
    assert isinstance(first, DetectResult) and isinstance(last, DetectResult) and isinstance(alone, DetectResult)
    expected = detect_alone(client, image_bytes("car2.jpg"))
    assert [(d.label, d.confidence, list(d.box)) for d in first.detections] == [
        (d["label"], d["confidence"], d["box"]) for d in expected["detections"]]
    assert Counter(d.label for d in last.detections) == EXPECTED_COUNTS["yolov3-tiny"]["fruits.jpg"]
    assert Counter(d.label for d in alone.detections) == EXPECTED_COUNTS["yolov3-tiny"]["oranges.jpg"]
    assert isinstance(error, YosoError) and error.status == 415 and "not an image" in error.detail.lower()
