"""/metrics and the access log of a real server: what each request adds, read back from the exposition.

Counters are compared before and after a request, so the tests hold whatever traffic came earlier.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.support import EXPECTED_COUNTS, LiveServer, Samples, eventually, image_bytes, scrape, serving, value
from yoso.cores import available_cores
from yoso.observability.metrics import REQUEST_SECONDS_BUCKETS

DEFAULT_ENGINE = {"engine": "openvino", "precision": "f32"}  # the labels of what runs the zoo by default

def increase(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def upload(name: str) -> dict:
    return {"file": (name, image_bytes(name), "image/jpeg")}


@contextmanager
def stalled_upload(url: str) -> Iterator[None]:
    """A /detect request whose body never finishes arriving: it stays in the server until closed."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
        yield


def test_detect_counts_images_detections_labels_and_confidences(client):
    before = scrape(client)
    response = client.post("/detect", params={"model": "yolov3-tiny"}, files=upload("fruits.jpg"))
    assert response.status_code == 200
    body = response.json()
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("yoso_images_processed_total", model="yolov3-tiny", endpoint="/detect") == 1
    for label, count in EXPECTED_COUNTS["yolov3-tiny"]["fruits.jpg"].items():
        assert delta("yoso_detections_total", model="yolov3-tiny", label=label) == count
    assert delta("yoso_detection_confidence_count", model="yolov3-tiny") == len(body["detections"])
    assert delta("yoso_detection_confidence_sum", model="yolov3-tiny") == pytest.approx(
        sum(d["confidence"] for d in body["detections"]), abs=1e-3)
    assert delta("yoso_inference_seconds_count", model="yolov3-tiny", **DEFAULT_ENGINE) == 1
    assert delta("yoso_inference_seconds_sum", model="yolov3-tiny", **DEFAULT_ENGINE) == pytest.approx(
        body["inference_ms"] / 1000)
    assert delta("yoso_decode_seconds_count") == 1
    assert delta("yoso_input_megapixels_sum") == pytest.approx(body["width"] * body["height"] / 1e6)
    assert delta("yoso_images_without_detections_total", model="yolov3-tiny") == 0
    assert delta("yoso_annotate_encode_seconds_count") == 0  # /detect draws nothing


def test_images_are_labelled_by_endpoint_as_http_metrics_label_the_handler(client):
    before = scrape(client)
    assert client.post("/count_objects", files=upload("car.jpg")).status_code == 200
    after = scrape(client)
    images = {"model": "yolov3-tiny", "endpoint": "/count_objects"}
    handler = {"handler": "/count_objects", "method": "POST", "status": "200"}
    assert increase(before, after, "yoso_images_processed_total", **images) == 1
    assert increase(before, after, "http_requests_total", **handler) == 1


def test_an_image_with_nothing_found_is_a_null_prediction(client):
    before = scrape(client)
    response = client.post("/detect", params={"model": "yolov4-tiny", "confidence": 0.999}, files=upload("clock.jpg"))
    assert response.json()["detections"] == []
    after = scrape(client)
    assert (value(after, "yoso_images_without_detections_total", model="yolov4-tiny")
            - value(before, "yoso_images_without_detections_total", model="yolov4-tiny")) == 1


def test_predict_records_annotate_encode_and_the_http_request(client):
    before = scrape(client)
    assert client.post("/predict", files=upload("dog_person_horse.jpg")).status_code == 200
    after = scrape(client)
    assert value(after, "yoso_annotate_encode_seconds_count") - value(before, "yoso_annotate_encode_seconds_count") == 1
    request = {"handler": "/predict", "method": "POST"}
    assert (value(after, "http_requests_total", status="200", **request)
            - value(before, "http_requests_total", status="200", **request)) == 1
    assert (value(after, "http_request_duration_seconds_count", **request)
            - value(before, "http_request_duration_seconds_count", **request)) == 1


def test_the_wait_for_a_worker_is_timed_apart_from_inference(client):
    before = scrape(client)
    assert client.post("/detect", params={"model": "yolov4-tiny"}, files=upload("car.jpg")).status_code == 200
    after = scrape(client)
    assert increase(before, after, "yoso_queue_wait_seconds_count", model="yolov4-tiny") == 1
    assert 0 <= increase(before, after, "yoso_queue_wait_seconds_sum", model="yolov4-tiny") < 1
    assert increase(before, after, "yoso_inference_seconds_count", model="yolov4-tiny", **DEFAULT_ENGINE) == 1


def test_admission_shows_what_it_expects_a_task_to_take_and_every_refusal_and_replacement_reason(client):
    """Seeded by each worker's warm-up, so present before any request: one image alone on every core, and
    beside the other busy worker on its share (the session server has two workers)."""
    samples = scrape(client)
    cores = available_cores()
    for model in ("yolov3-tiny", "yolov4-tiny"):
        for threads in {str(cores), str(max(1, cores // 2))}:
            assert 0.001 < value(samples, "yoso_task_expected_seconds", model=model, threads=threads, images="1") < 5
    shed = {dict(labels)["reason"] for name, labels in samples if name == "yoso_requests_shed_total"}
    assert shed == {"budget", "queue_cap", "uploads", "draining", "starting"}
    replaced = {dict(labels)["reason"] for name, labels in samples if name == "yoso_workers_replaced_total"}
    assert replaced == {"died", "hung", "start_timeout"}
    assert ("yoso_refusals_held", frozenset()) in samples
    assert 1 <= value(samples, "yoso_queue_wait_margin_ratio") <= 2


def test_latency_buckets_span_20_ms_to_10_s(client):
    client.get("/healthz")
    bounds = {dict(labels)["le"] for name, labels in scrape(client) if name == "http_request_duration_seconds_bucket"}
    assert {float(b) for b in bounds} == {*map(float, REQUEST_SECONDS_BUCKETS), float("inf")}
    assert min(REQUEST_SECONDS_BUCKETS) == 0.02 and max(REQUEST_SECONDS_BUCKETS) == 10


def test_errors_are_counted_by_status_and_process_no_image(client):
    before = scrape(client)
    assert client.post("/detect", params={"model": "no-such-model"}, files=upload("car.jpg")).status_code == 404
    assert client.post("/detect", files={"wrong": ("car.jpg", b"x")}).status_code == 422
    after = scrape(client)
    for status in ("404", "422"):
        labels = {"handler": "/detect", "method": "POST", "status": status}
        assert value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels) == 1
    assert (value(after, "yoso_images_processed_total", model="yolov3-tiny", endpoint="/detect")
            == value(before, "yoso_images_processed_total", model="yolov3-tiny", endpoint="/detect"))


def test_every_worker_process_is_reported(client):
    """The session server runs two worker processes with both tiny models; /metrics sees all of them."""
    samples = scrape(client)
    models = {m["name"]: m["workers_loaded"] for m in client.get("/models").json()["models"]}
    for model, workers in models.items():
        assert value(samples, "yoso_model_loaded_workers", model=model) == workers
    assert value(samples, "yoso_model_loaded_workers", model="yolov3-tiny") == 2
    assert value(samples, "yoso_model_load_seconds_count", model="yolov3-tiny", **DEFAULT_ENGINE) >= 2
    assert value(samples, "yoso_model_load_seconds_sum", model="yolov3-tiny", **DEFAULT_ENGINE) > 0


def test_metrics_is_left_out_of_its_own_metrics_and_of_the_access_log(server, client):
    client.get("/metrics")
    client.get("/healthz")
    samples = scrape(client)
    assert not [key for key in samples if ("handler", "/metrics") in key[1]]
    assert value(samples, "http_requests_total", handler="/healthz", method="GET", status="200") >= 1
    access_lines = [line for line in server.log().splitlines() if " yoso.access: " in line]
    assert any(" GET /healthz 200 " in line for line in access_lines)
    assert not [line for line in access_lines if "/metrics" in line]


def test_one_access_line_per_request_with_method_path_status_and_duration(server, client):
    def lines() -> list[str]:
        return [line for line in server.log().splitlines() if " yoso.access: POST /count_objects 200 " in line]

    logged = len(lines())
    client.post("/count_objects", params={"confidence": 0.6}, files=upload("car2.jpg"))
    assert eventually(lambda: len(lines()) == logged + 1, timeout_s=10)  # written within a moment, not at once
    assert lines()[-1].endswith(" ms model=yolov3-tiny version=1")  # the version that answered; tracing is off: no id
    assert "uvicorn.access" not in server.log()  # uvicorn's own access log is off: no doubled lines


@pytest.fixture(scope="module")
def small_server(tmp_path_factory) -> Iterator[LiveServer]:
    """Room for exactly one request: one worker, no queue, one upload arriving at a time."""
    env = {"YOSO_WORKERS": "1", "YOSO_MAX_QUEUE": "0", "YOSO_MAX_UPLOADS": "1",
           "YOSO_PRELOAD_MODELS": "yolov3-tiny"}
    yield from serving(env, tmp_path_factory.mktemp("small"))


def test_in_flight_gauge_counts_requests_being_handled(small_server):
    with httpx.Client(base_url=small_server.url, timeout=30) as http:
        assert value(scrape(http), "yoso_requests_in_flight") == 0  # the scrape itself is not counted
        with stalled_upload(small_server.url):
            assert eventually(lambda: value(scrape(http), "yoso_requests_in_flight") == 1)
        assert eventually(lambda: value(scrape(http), "yoso_requests_in_flight") == 0)


def test_a_request_refused_at_capacity_is_counted_as_shed_with_its_reason(small_server):
    with httpx.Client(base_url=small_server.url, timeout=30) as http:
        before = scrape(http)
        with stalled_upload(small_server.url):
            assert eventually(lambda: value(scrape(http), "yoso_requests_in_flight") == 1)
            refused = http.post("/detect", files=upload("car.jpg"))
        assert refused.status_code == 503 and "retry-after" in refused.headers
        after = scrape(http)
    assert increase(before, after, "yoso_requests_shed_total", reason="uploads") == 1
    assert all(increase(before, after, "yoso_requests_shed_total", reason=other) == 0
               for other in ("budget", "queue_cap", "draining", "starting"))
    labels = {"handler": "/detect", "method": "POST", "status": "503"}
    assert value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels) == 1


def all_at_once(tmp_path, env: dict[str, str], path: str, names: list[str]) -> tuple[list, Samples, Samples]:
    """On a server of one worker (and `env`), one request per image name, all at once: the answers, and
    /metrics before and after them."""
    live = LiveServer(env={"YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny", **env})
    live.start(tmp_path / "server.log")
    try:
        with httpx.Client(base_url=live.url, timeout=30) as http:
            before = scrape(http)
            with ThreadPoolExecutor(len(names)) as pool:
                answers = list(pool.map(lambda name: http.post(path, files=upload(name)), names))
            return answers, before, scrape(http)
    finally:
        live.stop()


def test_a_batch_counts_one_forward_pass_and_every_image(tmp_path):
    """Three requests for the same model and confidence, held up to 1 s to fill one batch of 3: one forward
    pass in yoso_inference_seconds, three images in yoso_images_processed_total."""
    answers, before, after = all_at_once(tmp_path, {"YOSO_MAX_QUEUE": "4", "YOSO_MAX_BATCH_SIZE": "3",
                                                    "YOSO_MAX_BATCH_DELAY_MS": "1000"},
                                         "/detect", ["car.jpg", "fruits.jpg", "clock.jpg"])
    assert [answer.status_code for answer in answers] == [200] * 3
    assert len({answer.json()["inference_ms"] for answer in answers}) == 1  # the same forward pass
    assert increase(before, after, "yoso_inference_seconds_count", model="yolov3-tiny", **DEFAULT_ENGINE) == 1
    assert increase(before, after, "yoso_images_processed_total", model="yolov3-tiny", endpoint="/detect") == 3


def test_requests_queued_behind_a_busy_worker_share_its_next_task_by_default(tmp_path):
    """Default batching: eight requests at once on one worker. The first runs at once and the second is sent
    ahead to the busy worker; the rest queue, and go together once the worker can take a task again. Fewer
    forward passes than requests, every request answered."""
    answers, before, after = all_at_once(tmp_path, {}, "/count_objects",
                                         ["car.jpg", "fruits.jpg", "clock.jpg", "dog_person_horse.jpg"] * 2)
    assert [answer.status_code for answer in answers] == [200] * 8
    assert increase(before, after, "yoso_images_processed_total", model="yolov3-tiny", endpoint="/count_objects") == 8
    assert increase(before, after, "yoso_inference_seconds_count", model="yolov3-tiny", **DEFAULT_ENGINE) < 8
