"""YOSO_ENGINE and YOSO_INFERENCE_PRECISION on real servers: what /models, /metrics, the log and the detections
say for the default engine (openvino f32), for opencv, and for bf16."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import (EXPECTED_COUNTS, SAMPLE_IMAGES, LiveServer, http_client, image_bytes, scrape, serving,
                           value)
from yoso.config import Precision, load_settings, precision_in_use

BF16_RUNS_HERE = precision_in_use(load_settings(engine="openvino", inference_precision="bf16"))[0] is Precision.bf16


def _runtimes(http: httpx.Client) -> dict[str, tuple[str, str]]:
    return {m["name"]: (m["engine"], m["precision"]) for m in http.get("/models").json()["models"]}


def _detections(http: httpx.Client, image: str) -> list[tuple[str, list[int]]]:
    response = http.post("/detect", files={"file": (image, image_bytes(image), "image/jpeg")})
    assert response.status_code == 200, response.text
    return [(d["label"], d["box"]) for d in response.json()["detections"]]


@pytest.fixture(scope="module")
def opencv_server(model_store, tmp_path_factory) -> Iterator[LiveServer]:
    """The opencv engine, asked for bf16, which it cannot run."""
    env = {"YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_ENGINE": "opencv",
           "YOSO_INFERENCE_PRECISION": "bf16"}
    yield from serving(env, tmp_path_factory.mktemp("opencv"))


@pytest.fixture(scope="module")
def opencv(opencv_server) -> Iterator[httpx.Client]:
    yield from http_client(opencv_server)


def test_the_default_engine_is_openvino_in_f32_in_models_and_metrics(client):
    assert _runtimes(client) == {"yolov3-tiny": ("openvino", "f32"), "yolov4-tiny": ("openvino", "f32"),
                                 "yolov3": ("openvino", "f32"), "yolov4": ("openvino", "f32")}
    _detections(client, "fruits.jpg")
    samples = scrape(client)
    assert value(samples, "yoso_inference_seconds_count", model="yolov3-tiny", engine="openvino", precision="f32") >= 1
    assert value(samples, "yoso_model_load_seconds_count", model="yolov3-tiny", engine="openvino",
                 precision="f32") >= 1


def test_the_opencv_engine_says_in_one_line_that_it_runs_f32(opencv_server, opencv):
    assert _runtimes(opencv)["yolov3-tiny"] == ("opencv", "f32")
    warnings = [line for line in opencv_server.log().splitlines() if "YOSO_INFERENCE_PRECISION" in line]
    assert len(warnings) == 1 and "bf16: the opencv engine runs f32 only; running f32" in warnings[0]
    assert "yolov3-tiny (version 1, opencv f32)" in opencv_server.log()
    _detections(opencv, "car.jpg")
    assert value(scrape(opencv), "yoso_inference_seconds_count", model="yolov3-tiny", engine="opencv",
                 precision="f32") == 1


def test_both_engines_answer_the_same_detections_on_every_test_image(client, opencv):
    for image in SAMPLE_IMAGES:
        assert _detections(client, image) == _detections(opencv, image), image


@pytest.mark.skipif(not BF16_RUNS_HERE, reason="this CPU has neither AMX nor AVX512-BF16")
def test_bf16_serves_with_the_counts_of_cvlib(model_store, tmp_path_factory):
    env = {"YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_INFERENCE_PRECISION": "bf16"}
    for live in serving(env, tmp_path_factory.mktemp("bf16")):
        for http in http_client(live):
            assert _runtimes(http)["yolov3-tiny"] == ("openvino", "bf16")
            assert "YOSO_INFERENCE_PRECISION" not in live.log()
            for image in SAMPLE_IMAGES:
                response = http.post("/count_objects", files={"file": (image, image_bytes(image), "image/jpeg")})
                assert response.json() == {"items": EXPECTED_COUNTS["yolov3-tiny"][image]}, image
