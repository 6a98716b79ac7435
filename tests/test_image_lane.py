"""The image lane (yoso/api/image_lane.py): plain image requests answered without FastAPI's routing, every other
request left to FastAPI, and the same answers either way, against the real model and images."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support import eventually, image_bytes
from yoso.api.image_lane import ImageLane, plain_confidence
from yoso.api.routes import IMAGE_ANSWERS
from yoso.api.inference import get_service
from yoso.app import create_app
from yoso.config import load_settings

IMAGE = image_bytes("dog_person_horse.jpg")
# The same confidence, read plainly by the lane and only by FastAPI: both must answer alike.
LANE, FASTAPI = {"confidence": "0.5"}, {"confidence": "5e-1"}


@pytest.mark.parametrize(("query", "confidence"), [
    (b"", 0.5), (b"confidence=0.25", 0.25), (b"confidence=1", 1.0), (b"confidence=.3", 0.3),
    (b"model=yolov4-tiny&confidence=0.7&extra=1", 0.7), (b"confidence=0.9&confidence=0.4", 0.4),
    (b"model=" + b"m" * 64, 0.5),
])
def test_a_plain_query_gives_its_confidence(query, confidence):
    assert plain_confidence(query) == confidence


@pytest.mark.parametrize("query", [
    b"confidence=0", b"confidence=1.5", b"confidence=5e-1", b"confidence=", b"confidence=nan", b"confidence=inf",
    b"confidence=%200.5", b"confidence=-0.5", b"confidence=1_0", b"confidence=0.5.5", b"model=" + b"m" * 65,
])
def test_a_query_the_lane_does_not_read_plainly_is_left_to_fastapi(query):
    assert plain_confidence(query) is None


def test_the_lane_serves_every_image_route_and_reads_every_query_parameter_they_declare():
    """A parameter added to an image route must be read by the lane too, or the lane would answer without it."""
    routes = ImageLane(app=None, service=None).routes
    assert set(routes) == set(IMAGE_ANSWERS)
    for route in routes.values():
        assert {parameter.name for parameter in route.dependant.query_params} == {"model", "confidence"}


def test_a_plain_image_request_skips_fastapis_dependencies_and_any_other_is_answered_by_the_route(model_store,
                                                                                                monkeypatch):
    monkeypatch.setenv("YOSO_WORKERS", "1")
    monkeypatch.setenv("YOSO_PRELOAD_MODELS", "yolov3-tiny")
    monkeypatch.setenv("YOSO_GRPC_PORT", "0")  # no gRPC port (and no gRPC import) in the test's own process
    app = create_app(load_settings())
    solved = []

    async def counted_service():
        solved.append(1)
        return app.state.service

    app.dependency_overrides[get_service] = counted_service
    with TestClient(app) as client:
        assert eventually(lambda: client.get("/readyz").status_code == 200, timeout_s=120)
        solved.clear()  # /readyz solves it too
        by_lane = client.post("/count_objects", params=LANE, files={"file": ("a.jpg", IMAGE, "image/jpeg")})
        lane_solved = len(solved)
        by_route = client.post("/count_objects", params=FASTAPI, files={"file": ("a.jpg", IMAGE, "image/jpeg")})
    assert by_lane.status_code == by_route.status_code == 200
    assert by_lane.json() == by_route.json() and by_lane.json()["items"]
    assert (lane_solved, len(solved)) == (0, 1)


def _untimed(response) -> tuple:
    body = response.json() if response.headers["content-type"] == "application/json" else response.content
    if isinstance(body, dict):
        body.pop("inference_ms", None)
        for result in body.get("results", []):
            result.pop("inference_ms", None)
    return response.status_code, response.headers["content-type"], response.headers.get("x-yoso-counts"), body


@pytest.mark.parametrize("path", ["/detect", "/count_objects", "/predict"])
@pytest.mark.parametrize("upload", ["one image", "two images", "not an image", "no file field"])
def test_the_lane_answers_as_the_fastapi_route_does(client, path, upload):
    files = {"one image": [("file", ("a.jpg", IMAGE, "image/jpeg"))],
             "two images": [("file", ("a.jpg", IMAGE, "image/jpeg")), ("file", ("b.jpg", IMAGE, "image/jpeg"))],
             "not an image": [("file", ("a.txt", b"plain text", "text/plain"))],
             "no file field": [("other", ("a.jpg", IMAGE, "image/jpeg"))]}[upload]
    by_lane, by_route = (client.post(path, params=params, files=files) for params in (LANE, FASTAPI))
    assert _untimed(by_lane) == _untimed(by_route)


@pytest.mark.parametrize("params", [{"confidence": "0"}, {"confidence": "1.5"}, {"confidence": "abc"},
                                    {"confidence": ""}, {"model": "m" * 65}])
def test_a_bad_parameter_gets_fastapis_422(client, params):
    response = client.post("/detect", params=params, files={"file": ("a.jpg", IMAGE, "image/jpeg")})
    assert response.status_code == 422
    assert next(iter(params)) in response.json()["detail"]
