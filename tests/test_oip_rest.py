"""The Open Inference Protocol's REST API, called by Triton's own client (`tritonclient.http`, unchanged) and
by hand, against the session's real server: the detections equal /detect's for the same images."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support import SAMPLE_IMAGES, image_bytes, scrape, value

MODEL = "yolov3-tiny"
OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels")


@pytest.fixture(scope="module")
def triton_http(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def image_input(images: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def detections(result, index: int) -> list[tuple[str, list[float], float]]:
    """Image `index`'s detections from the output tensors, padding dropped."""
    count = int(result.as_numpy("num_detections")[index, 0])
    labels = result.as_numpy("detection_labels")[index, :count]
    boxes = result.as_numpy("detection_boxes")[index, :count]
    scores = result.as_numpy("detection_scores")[index, :count]
    return [(label.decode(), box.tolist(), float(score)) for label, box, score in zip(labels, boxes, scores)]


def detect(client, name: str, confidence: float = 0.5) -> list[tuple[str, list[float], float]]:
    answer = client.post("/detect", params={"model": MODEL, "confidence": confidence},
                         files={"file": (name, image_bytes(name), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    return [(d["label"], [float(c) for c in d["box"]], d["confidence"]) for d in answer.json()["detections"]]


def assert_same(got, expected) -> None:
    assert [(label, box) for label, box, _ in got] == [(label, box) for label, box, _ in expected]
    assert [score for *_, score in got] == pytest.approx([score for *_, score in expected], abs=1e-6)


def test_health_and_metadata_answer_as_triton_reads_them(triton_http):
    assert triton_http.is_server_live() and triton_http.is_server_ready()
    assert triton_http.is_model_ready(MODEL) and triton_http.is_model_ready(MODEL, "1")
    assert "binary_tensor_data" in triton_http.get_server_metadata()["extensions"]
    metadata = triton_http.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("num_detections", "INT32", [-1, 1]), ("detection_boxes", "FP32", [-1, -1, 4]),
        ("detection_scores", "FP32", [-1, -1]), ("detection_classes", "INT32", [-1, -1]),
        ("detection_labels", "BYTES", [-1, -1])]
    with pytest.raises(InferenceServerException) as unknown:
        triton_http.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404" and "no-such-model" in unknown.value.message()
    with pytest.raises(InferenceServerException, match="no version '7'"):
        triton_http.get_model_metadata(MODEL, "7")


@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_one_image_gets_the_detections_of_detect(triton_http, client, name):
    result = triton_http.infer(MODEL, [image_input([image_bytes(name)])])
    assert_same(detections(result, 0), detect(client, name))
    assert result.get_response()["model_name"] == MODEL


def test_a_batch_gets_each_images_detections_in_order_padded_to_the_most(triton_http, client):
    names = ["dog_person_horse.jpg", "car.jpg", "fruits.jpg", "clock.jpg"]
    result = triton_http.infer(MODEL, [image_input([image_bytes(n) for n in names])])
    expected = [detect(client, name) for name in names]
    for index, name in enumerate(names):
        assert_same(detections(result, index), expected[index])
    most = max(len(e) for e in expected)
    assert result.as_numpy("detection_boxes").shape == (len(names), most, 4)
    padding = result.as_numpy("detection_classes")[1, len(expected[1]):]
    assert padding.tolist() == [-1] * (most - len(expected[1]))
    labels = triton_http.get_model_metadata(MODEL)  # classes index the model's labels: COCO's, person first
    assert labels and result.as_numpy("detection_classes")[0, 0] == 0


def test_the_confidence_parameter_is_the_threshold_of_detect(triton_http, client):
    result = triton_http.infer(MODEL, [image_input([image_bytes("fruits.jpg")])], parameters={"confidence": 0.2})
    expected = detect(client, "fruits.jpg", confidence=0.2)
    assert len(expected) > len(detect(client, "fruits.jpg"))
    assert_same(detections(result, 0), expected)


def test_plain_json_with_base64_images_and_chosen_outputs_answers_json(client, triton_http):
    body = {"id": "req-7", "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2], "data": [
        base64.b64encode(image_bytes(name)).decode() for name in ("car.jpg", "dog_person_horse.jpg")]}],
        "outputs": [{"name": "detection_labels"}, {"name": "num_detections"}]}
    answer = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["id"] == "req-7" and document["model_name"] == MODEL
    outputs = {o["name"]: o for o in document["outputs"]}
    assert set(outputs) == {"detection_labels", "num_detections"}
    car, dog_person_horse = ([label for label, *_ in detect(client, name)] for name in ("car.jpg", "dog_person_horse.jpg"))
    assert outputs["num_detections"]["data"] == [len(car), len(dog_person_horse)] == [1, 3]
    assert outputs["detection_labels"]["data"] == [*car, "", "", *dog_person_horse]


def test_compressed_requests_and_the_versions_path_work_as_triton_sends_them(triton_http, client):
    result = triton_http.infer(MODEL, [image_input([image_bytes("car.jpg")])], model_version="1",
                               request_compression_algorithm="gzip")
    assert_same(detections(result, 0), detect(client, "car.jpg"))


def raw_infer(client, document: dict, binary: bytes = b"", **headers):
    body = json.dumps(document).encode()
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(body))
    return client.post(f"/v2/models/{MODEL}/infer", content=body + binary, headers=headers)


def image_tensor(**fields) -> dict:
    return {"name": "IMAGE", "datatype": "BYTES", "shape": [1],
            "data": [base64.b64encode(image_bytes("car.jpg")).decode()]} | fields


@pytest.mark.parametrize(("document", "status", "says"), [
    ({"inputs": [image_tensor(datatype="FP32", data=[1.0])]}, 400, "BYTES (encoded images), not FP32"),
    ({"inputs": [image_tensor(name="INPUT0")]}, 400, "one input tensor, 'IMAGE'"),
    ({"inputs": [image_tensor(shape=[2])]}, 400, "holds 2 elements; the data holds 1"),
    ({"inputs": [image_tensor(shape=[2, 2], data=["aGk="] * 4)]}, 400, "has shape [B]"),
    ({"inputs": [image_tensor(data=["not base64 at all!"])]}, 400, "not base64"),
    ({"inputs": [image_tensor(data=[base64.b64encode(b"no image here").decode()])]}, 415, "Image 0 of 'IMAGE'"),
    ({"inputs": [image_tensor(shape=[17], data=["aGk="] * 17)]}, 400, "the limit is 16 per request"),
    ({"inputs": [image_tensor()], "outputs": [{"name": "masks"}]}, 400, "no output 'masks'"),
    ({"inputs": [image_tensor()], "parameters": {"confidence": 2}}, 400, "'confidence' is a number in (0, 1]"),
    ({"inputs": [image_tensor(datatype="COMPLEX")]}, 400, "unknown datatype 'COMPLEX'"),
    ({"inputs": []}, 400, "needs `inputs`"),
])
def test_bad_tensors_get_a_4xx_in_the_protocols_error_shape(client, document, status, says):
    answer = raw_infer(client, document)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]
    assert set(answer.json()) == {"error"}


def test_bad_binary_framing_and_bodies_get_400(client):
    sized = image_tensor(parameters={"binary_data_size": 10})
    del sized["data"]
    short = raw_infer(client, {"inputs": [sized]}, b"\x09\x00\x00\x00abc")
    assert short.status_code == 400 and "runs past the binary data" in short.json()["error"]
    sized["parameters"]["binary_data_size"] = 7
    framing = raw_infer(client, {"inputs": [sized]}, b"\x09\x00\x00\x00abc")
    assert framing.status_code == 400 and "runs past the data's end" in framing.json()["error"]
    leftover = raw_infer(client, {"inputs": [image_tensor()]}, b"extra")
    assert leftover.status_code == 400 and "no input claims" in leftover.json()["error"]
    not_json = client.post(f"/v2/models/{MODEL}/infer", content=b"{nope")
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    bomb = client.post(f"/v2/models/{MODEL}/infer", content=gzip.compress(b" " * (40 << 20)),
                       headers={"Content-Encoding": "gzip"})
    assert bomb.status_code == 413 and "larger than the limit" in bomb.json()["error"]


def test_errors_before_the_route_keep_the_protocols_shape_and_yosos_own_routes_keep_theirs(client):
    bad_timeout = raw_infer(client, {"inputs": [image_tensor()]}, **{"X-Yoso-Timeout-Ms": "soon"})
    assert bad_timeout.status_code == 422 and "X-Yoso-Timeout-Ms" in bad_timeout.json()["error"]
    unknown = client.get("/v2/models/no-such-model/ready")
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["error"]
    assert client.get("/v2/nowhere").json().keys() == {"error"}
    assert client.post("/detect").json().keys() == {"detail"}


def test_metrics_count_each_image_of_a_batch_under_the_protocols_route(triton_http, client):
    images = {"model": MODEL, "endpoint": "/v2/models/{name}/infer"}
    requests = {"handler": "/v2/models/{name}/infer", "method": "POST", "status": "200"}
    before = scrape(client)
    triton_http.infer(MODEL, [image_input([image_bytes(n) for n in ("car.jpg", "clock.jpg", "apple.jpg")])])
    after = scrape(client)
    assert value(after, "yoso_images_processed_total", **images) - value(before, "yoso_images_processed_total", **images) == 3
    assert value(after, "http_requests_total", **requests) - value(before, "http_requests_total", **requests) == 1
