"""yosoclient.Client against a real server process, real models and real images."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from tests.loopback import Reply, ScriptedServer, silent_server
from tests.support import DATA, EXPECTED_COUNTS, free_port, image_bytes
from yosoclient import Client, Detection, DetectResult, YosoConnectionError, YosoError, YosoTimeout


@pytest.fixture()
def yoso(server):
    with Client(server.url, timeout=60) as client:
        yield client


def decoded(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("model", sorted(EXPECTED_COUNTS))
@pytest.mark.parametrize("image", ["dog_person_horse.jpg", "fruits.jpg"])
def test_count_objects_returns_the_counts_of_the_named_model(yoso, model, image):
    assert yoso.count_objects(DATA / image, model=model) == EXPECTED_COUNTS[model][image]


def test_an_image_may_be_a_path_a_string_bytes_or_an_array(yoso):
    expected = EXPECTED_COUNTS["yolov3-tiny"]["apples.jpg"]
    array = cv2.imread(str(DATA / "apples.jpg"))
    for image in (DATA / "apples.jpg", str(DATA / "apples.jpg"), image_bytes("apples.jpg"), array):
        assert yoso.count_objects(image) == expected


def test_confidence_is_passed_to_the_server(yoso):
    low = yoso.detect(DATA / "fruits.jpg", confidence=0.2)
    high = yoso.detect(DATA / "fruits.jpg", confidence=0.9)
    assert (low.confidence, high.confidence) == (0.2, 0.9)
    assert len(high.detections) < len(low.detections)


def test_predict_returns_the_annotated_jpeg_at_the_input_size(yoso):
    jpeg = yoso.predict(DATA / "car2.jpg")
    assert jpeg[:3] == b"\xff\xd8\xff"
    original = cv2.imread(str(DATA / "car2.jpg"))
    assert decoded(jpeg).shape == original.shape
    assert np.abs(decoded(jpeg).astype(int) - original.astype(int)).max() > 100  # boxes were drawn


def test_predict_to_file_writes_the_jpeg(yoso, tmp_path):
    written = yoso.predict_to_file(DATA / "clock.jpg", tmp_path / "clock_boxes.jpg", model="yolov4-tiny")
    assert written == tmp_path / "clock_boxes.jpg"
    assert decoded(written.read_bytes()).shape == cv2.imread(str(DATA / "clock.jpg")).shape


def test_detect_returns_typed_detections(yoso):
    result = yoso.detect(DATA / "car2.jpg", model="yolov4-tiny")
    assert isinstance(result, DetectResult)
    assert (result.model, result.confidence, result.width, result.height) == ("yolov4-tiny", 0.5, 275, 183)
    assert [d.label for d in result.detections] == ["car", "car"]
    for detection in result.detections:
        assert isinstance(detection, Detection) and len(detection.box) == 4
        x1, y1, x2, y2 = detection.box
        assert 0 <= x1 < x2 <= 275 and 0 <= y1 < y2 <= 183 and 0.5 < detection.confidence <= 1
    assert result.inference_ms > 0


def test_models_lists_the_zoo_with_the_tiny_models_loaded(yoso):
    info = yoso.models()
    assert info.default == "yolov3-tiny"
    by_name = {model.name: model for model in info.models}
    assert set(by_name) >= {"yolov3-tiny", "yolov4-tiny", "yolov3", "yolov4"}
    assert all(by_name[name].installed and by_name[name].loaded for name in EXPECTED_COUNTS)
    assert by_name["yolov3-tiny"].classes == 80


def test_health_reports_a_warm_server_ready(yoso):
    health = yoso.health()
    assert health.ready and health.status == "ready"


def test_an_unknown_model_raises_404_with_the_servers_detail(yoso):
    with pytest.raises(YosoError) as raised:
        yoso.count_objects(DATA / "car.jpg", model="yolov9-huge")
    assert raised.value.status == 404
    assert "yolov9-huge" in raised.value.detail and "yolov3-tiny" in raised.value.detail
    assert str(raised.value).startswith("404 Not Found: ")


def test_a_file_that_is_not_an_image_raises_415(yoso, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    with pytest.raises(YosoError) as raised:
        yoso.predict(text)
    assert raised.value.status == 415 and "JPEG" in raised.value.detail


def test_something_that_is_not_an_image_is_refused_before_any_request(yoso):
    with pytest.raises(TypeError, match="path, bytes or a numpy array"):
        yoso.detect(12345)


def test_a_port_with_nothing_listening_raises_a_connection_error():
    with Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(YosoConnectionError) as raised:
        client.health()
    assert raised.value.status is None
    assert "cannot connect" in str(raised.value) and "refused" in str(raised.value)


def test_a_server_that_never_answers_raises_a_timeout():
    with silent_server() as url, Client(url, timeout=0.3) as client, pytest.raises(YosoTimeout) as raised:
        client.count_objects(DATA / "car.jpg")
    assert raised.value.status is None
    assert "within 0.3 s" in str(raised.value)


def test_a_url_without_scheme_means_http(server):
    with Client(server.url.removeprefix("http://")) as client:
        assert client.health().ready


# A real overload is not deterministic (it depends on timing), so 503 + Retry-After comes from a script.
def test_a_503_with_retry_after_is_retried_until_it_succeeds():
    busy = Reply(503, {"detail": "The server is at capacity; retry shortly."}, {"Retry-After": "0"})
    with ScriptedServer([busy, busy, Reply(200, {"items": {"car": 1}})]) as fake, Client(fake.url) as client:
        assert client.count_objects(image_bytes("car.jpg")) == {"car": 1}
    assert [r.path for r in fake.received] == ["/count_objects"] * 3


def test_retries_are_bounded_and_then_the_503_is_raised():
    busy = Reply(503, {"detail": "The server is at capacity; retry shortly."}, {"Retry-After": "0"})
    with ScriptedServer([busy]) as fake, Client(fake.url, retries=2) as client, pytest.raises(YosoError) as raised:
        client.count_objects(image_bytes("car.jpg"))
    assert len(fake.received) == 3
    assert (raised.value.status, raised.value.detail) == (503, "The server is at capacity; retry shortly.")


def test_the_wait_asked_by_retry_after_is_capped():
    slow = Reply(503, {"detail": "busy"}, {"Retry-After": "3600"})
    with ScriptedServer([slow, Reply(200, {"items": {}})]) as fake, Client(fake.url, max_retry_wait_s=0.1) as client:
        started = time.monotonic()
        assert client.count_objects(image_bytes("car.jpg")) == {}
    assert time.monotonic() - started < 60  # far below the hour asked for


def test_a_503_without_retry_after_is_not_retried():
    with ScriptedServer([Reply(503, {"detail": "down"})]) as fake, Client(fake.url) as client:
        with pytest.raises(YosoError) as raised:
            client.models()
    assert raised.value.status == 503 and len(fake.received) == 1


def test_a_starting_server_is_reported_not_ready():
    with ScriptedServer([Reply(503, {"status": "starting"})]) as fake, Client(fake.url) as client:
        health = client.health()
    assert (health.status, health.ready) == ("starting", False)


def test_the_api_key_is_sent_as_a_bearer_token_on_every_request():
    """The wire contract of the key: what the server checks is another test's business."""
    models = {"default": "yolov3-tiny", "models": []}
    with ScriptedServer([Reply(200, models)]) as fake:
        with Client(fake.url, api_key="s3cret-key") as client:
            client.models()
            client.models()
        with Client(fake.url) as client:
            client.models()
    assert [r.headers.get("authorization") for r in fake.received] == ["Bearer s3cret-key"] * 2 + [None]


def test_annotate_returns_the_jpeg_and_what_it_drew_from_one_request(yoso, tmp_path):
    annotated = yoso.annotate(DATA / "dog_person_horse.jpg", model="yolov4-tiny")
    assert annotated.counts == EXPECTED_COUNTS["yolov4-tiny"]["dog_person_horse.jpg"]
    assert annotated.jpeg[:3] == b"\xff\xd8\xff"
    assert annotated.save(tmp_path / "out.jpg").read_bytes() == annotated.jpeg
