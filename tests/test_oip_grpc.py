"""The Open Inference Protocol over gRPC, called by Triton's own client (tritonclient.grpc), unchanged, against real
server processes: health, metadata, inference checked against the same server's /detect, errors as gRPC statuses,
API keys, deadlines, metrics, traces and the drain. And the generated code cannot drift from its .proto.

yoso's generated module is never imported here: its messages share their full names (package `inference`) with
tritonclient's, and one process's protobuf pool holds one definition of each.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.loopback import SpanReceiver
from tests.support import EXPECTED_COUNTS, ROOT, LiveServer, eventually, free_port, image_bytes, scrape, value

PROTO = "yoso/api/oip/inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2_grpc.py", "inference_pb2.pyi")
KEY = "grpc-test-key"
KEYED = {"x-api-key": KEY}
MODEL = "yolov3-tiny"
MAX_IMAGES = 4
SERVED = {"YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": MODEL}
OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_labels")


class Grpc:
    """A server with gRPC on and an API key, traced to a loopback Zipkin; Triton's client for it."""

    def __init__(self, live: LiveServer, port: int, receiver: SpanReceiver) -> None:
        self.live = live
        self.address = f"127.0.0.1:{port}"
        self.client = triton.InferenceServerClient(self.address)
        self.http = httpx.Client(base_url=live.url, headers=KEYED, timeout=60)
        self.receiver = receiver


@pytest.fixture(scope="module")
def grpc_server(model_store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grpc]:
    receiver = SpanReceiver()
    port = free_port()
    live = LiveServer(env={**SERVED, "YOSO_GRPC_PORT": str(port), "YOSO_API_KEY": KEY,
                           "YOSO_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES), "YOSO_MAX_QUEUE_WAIT_MS": "60000",
                           "YOSO_OTEL_INSTRUMENT": "true", "YOSO_OTEL_INSTRUMENT_EXPORTER": "zipkin",
                           "YOSO_ZIPKIN_ENDPOINT": receiver.url + "/api/v2/spans", "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        served = Grpc(live.start(tmp_path_factory.mktemp("grpc") / "server.log"), port, receiver)
        with served.client, served.http:
            yield served
    finally:
        live.stop()
        receiver.close()


def images(*names: str) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array([image_bytes(name) for name in names], dtype=np.object_))
    return tensor


def failure(call) -> str:
    """The gRPC status a call ends with (as tritonclient reports it: "StatusCode.NAME")."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.status()


def detected(server: Grpc, name: str, confidence: float = 0.5) -> list[dict]:
    response = server.http.post("/detect", params={"model": MODEL, "confidence": confidence},
                                files={"file": (name, image_bytes(name), "image/jpeg")})
    assert response.status_code == 200, response.text
    return response.json()["detections"]


def assert_same_detections(result: triton.InferResult, index: int, expected: list[dict]) -> None:
    count = int(result.as_numpy("num_detections")[index, 0])
    labels = result.as_numpy("detection_labels")[index]
    boxes, scores = result.as_numpy("detection_boxes")[index], result.as_numpy("detection_scores")[index]
    assert [label.decode() for label in labels[:count]] == [d["label"] for d in expected]
    assert np.abs(boxes[:count] - np.array([d["box"] for d in expected]).reshape(-1, 4)).max(initial=0) <= 1
    assert np.abs(scores[:count] - np.array([d["confidence"] for d in expected])).max(initial=0) <= 1e-3
    assert list(labels[count:]) == [b""] * (len(labels) - count)  # padding to the batch's most detections


def test_health_and_metadata_as_triton_reports_them(grpc_server):
    client = grpc_server.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=KEYED)
    server = client.get_server_metadata(headers=KEYED)
    assert server.name == "yoso" and "binary_tensor_data" in server.extensions
    metadata = client.get_model_metadata(MODEL, headers=KEYED, as_json=True)
    assert metadata["name"] == MODEL
    assert metadata["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": ["-1"]}]
    assert [(o["name"], o["datatype"], [int(size) for size in o["shape"]]) for o in metadata["outputs"]] == [
        ("num_detections", "INT32", [-1, 1]), ("detection_boxes", "FP32", [-1, -1, 4]),
        ("detection_scores", "FP32", [-1, -1]), ("detection_classes", "INT32", [-1, -1]),
        ("detection_labels", "BYTES", [-1, -1])]


def test_one_image_detects_what_http_detect_does(grpc_server):
    result = grpc_server.client.infer(MODEL, [images("car2.jpg")], headers=KEYED)
    assert result.get_response().model_name == MODEL
    assert [result.as_numpy(name).shape[0] for name in OUTPUTS] == [1] * len(OUTPUTS)
    assert_same_detections(result, 0, detected(grpc_server, "car2.jpg"))


def test_three_images_answer_in_order_each_as_http_detect_and_cvlib(grpc_server):
    names = ("dog_person_horse.jpg", "apple.jpg", "fruits.jpg")
    result = grpc_server.client.infer(MODEL, [images(*names)], headers=KEYED)
    most = int(result.as_numpy("num_detections").max())
    assert result.as_numpy("detection_boxes").shape == (3, most, 4)
    for index, name in enumerate(names):
        assert_same_detections(result, index, detected(grpc_server, name))
        count = int(result.as_numpy("num_detections")[index, 0])
        labels = [label.decode() for label in result.as_numpy("detection_labels")[index, :count]]
        assert {label: labels.count(label) for label in labels} == EXPECTED_COUNTS[MODEL][name]


def test_the_confidence_parameter_is_the_detection_threshold(grpc_server):
    low, high = (grpc_server.client.infer(MODEL, [images("fruits.jpg")], parameters={"confidence": confidence},
                                          headers=KEYED) for confidence in (0.2, 0.9))
    assert int(high.as_numpy("num_detections")[0, 0]) < int(low.as_numpy("num_detections")[0, 0])
    assert_same_detections(low, 0, detected(grpc_server, "fruits.jpg", 0.2))
    assert (high.as_numpy("detection_scores")[0, :int(high.as_numpy("num_detections")[0, 0])] > 0.9).all()


def test_typed_contents_are_read_as_raw_contents_are(grpc_server):
    """The protocol's other encoding, InferTensorContents, sent with Triton's own messages."""
    request = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[service_pb2.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1],
        contents=service_pb2.InferTensorContents(bytes_contents=[image_bytes("car2.jpg")]))])
    with grpc.insecure_channel(grpc_server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=list(KEYED.items()))
    assert_same_detections(triton.InferResult(response), 0, detected(grpc_server, "car2.jpg"))


def test_an_image_over_grpcs_default_4_mb_is_taken(grpc_server):
    noise = np.random.default_rng(0).integers(0, 256, (2400, 3200, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", noise, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and len(encoded) > 4 * 1024 * 1024
    tensor = triton.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([encoded.tobytes()], dtype=np.object_))
    assert grpc_server.client.infer(MODEL, [tensor], headers=KEYED).as_numpy("num_detections").shape == (1, 1)


def test_bad_tensors_are_invalid_arguments(grpc_server):
    client = grpc_server.client
    as_floats = triton.InferInput("IMAGE", [1], "FP32")
    as_floats.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    misnamed = triton.InferInput("INPUT0", [1], "BYTES")
    misnamed.set_data_from_numpy(np.array([image_bytes("car.jpg")], dtype=np.object_))
    not_an_image = triton.InferInput("IMAGE", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"this is not an image"], dtype=np.object_))
    too_many = images(*["car.jpg"] * (MAX_IMAGES + 1))
    for tensor in (as_floats, misnamed, not_an_image, too_many):
        assert failure(lambda: client.infer(MODEL, [tensor], headers=KEYED)) == "StatusCode.INVALID_ARGUMENT"
    assert failure(lambda: client.infer(MODEL, [images("car.jpg")], parameters={"confidence": 2.0},
                                        headers=KEYED)) == "StatusCode.INVALID_ARGUMENT"


def test_contents_that_do_not_fit_their_shape_are_invalid_arguments(grpc_server):
    wrong = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[service_pb2.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[2])], raw_input_contents=[b"\x05\x00\x00\x00abc"])
    with grpc.insecure_channel(grpc_server.address) as channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(wrong, metadata=list(KEYED.items()))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "BYTES" in raised.value.details()


def test_an_unknown_model_is_not_found(grpc_server):
    client = grpc_server.client
    assert failure(lambda: client.infer("no-such-model", [images("car.jpg")], headers=KEYED)) == "StatusCode.NOT_FOUND"
    assert failure(lambda: client.get_model_metadata("no-such-model", headers=KEYED)) == "StatusCode.NOT_FOUND"
    assert failure(lambda: client.is_model_ready("no-such-model", headers=KEYED)) == "StatusCode.NOT_FOUND"


def test_calls_need_the_api_key_but_the_probes(grpc_server):
    client = grpc_server.client
    for headers in ({}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"}):
        assert failure(lambda: client.infer(MODEL, [images("car.jpg")], headers=headers)) == "StatusCode.UNAUTHENTICATED"
        assert failure(lambda: client.get_model_metadata(MODEL, headers=headers)) == "StatusCode.UNAUTHENTICATED"
        assert failure(lambda: client.get_server_metadata(headers=headers)) == "StatusCode.UNAUTHENTICATED"
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers={"authorization": f"Bearer {KEY}"})


def test_a_deadline_too_short_to_meet_is_refused_or_exceeded_never_internal(grpc_server):
    client = grpc_server.client
    for timeout_s in (0.001, 0.02):
        status = failure(lambda: client.infer(MODEL, [images(*["fruits.jpg"] * 3)], client_timeout=timeout_s,
                                              headers=KEYED))
        assert status in ("StatusCode.DEADLINE_EXCEEDED", "StatusCode.UNAVAILABLE")
    assert client.infer(MODEL, [images("car.jpg")], client_timeout=30, headers=KEYED).as_numpy("num_detections")[0, 0]


def test_a_refusal_says_when_to_retry(grpc_server):
    """5 ms cannot hold an inference (about 21 ms here, one image on both cores): refused at once (the deadline
    only if the host stalls). 20 ms was too close: the learned task time sometimes fell under it."""
    request = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[service_pb2.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[1])], raw_input_contents=[b"\0" * 4])
    with grpc.insecure_channel(grpc_server.address) as channel, pytest.raises(grpc.RpcError) as raised:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=0.005,
                                                                     metadata=list(KEYED.items()))
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if raised.value.code() is grpc.StatusCode.UNAVAILABLE:
        assert ("retry-after", "1") in raised.value.trailing_metadata()
        assert "retry" in raised.value.details()


def test_tritons_other_rpcs_are_unimplemented(grpc_server):
    assert failure(lambda: grpc_server.client.get_model_config(MODEL, headers=KEYED)) == "StatusCode.UNIMPLEMENTED"


def test_calls_are_counted_by_method_and_code_in_metrics(grpc_server):
    def handled(code: str) -> float:
        return value(scrape(grpc_server.http), "grpc_server_handled_total", grpc_code=code, grpc_method="ModelInfer",
                     grpc_service="inference.GRPCInferenceService")

    ok, refused = handled("OK"), handled("UNAUTHENTICATED")
    grpc_server.client.infer(MODEL, [images("car.jpg")], headers=KEYED)
    failure(lambda: grpc_server.client.infer(MODEL, [images("car.jpg")]))
    assert (handled("OK"), handled("UNAUTHENTICATED")) == (ok + 1, refused + 1)
    samples = scrape(grpc_server.http)
    assert value(samples, "grpc_server_handling_seconds_count", grpc_method="ModelInfer",
                 grpc_service="inference.GRPCInferenceService") >= ok + 2
    assert value(samples, "yoso_images_processed_total", model=MODEL, endpoint="/v2/models/{name}/infer") > 0


def test_each_call_is_a_server_span_over_the_inference_spans(grpc_server):
    trace_id = "5b8efff798038103d269b633813fc60c"
    grpc_server.client.infer(MODEL, [images("car2.jpg")], headers={**KEYED, "traceparent": f"00-{trace_id}-"
                                                                                           "eee19b7ec3c1b174-01"})

    def spans() -> list[dict]:
        return [span for span in grpc_server.receiver.zipkin_spans() if span["traceId"] == trace_id]

    assert eventually(lambda: any(span.get("kind") == "SERVER" for span in spans()), 30), "no server span arrived"
    [root] = [span for span in spans() if span.get("kind") == "SERVER"]
    assert root["name"] == "inference.GRPCInferenceService/ModelInfer"
    assert root["parentId"] == "eee19b7ec3c1b174"  # the caller's trace continues
    assert root["tags"]["rpc.system"] == "grpc" and root["tags"]["rpc.grpc.status_code"] == "0"
    assert eventually(lambda: {"queue", "decode", "inference"} <= {s["name"] for s in spans()
                                                                  if s.get("parentId") == root["id"]}, 30)


def test_the_proto_is_tritons_field_for_field(tmp_path):
    """Every message and field yoso declares has Triton's name, number, type and cardinality."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--descriptor_set_out={tmp_path / 'set'}",
                    PROTO], cwd=ROOT, check=True)
    files = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set").read_bytes())
    [ours] = files.file
    assert ours.package == "inference"

    def fields(message: descriptor_pb2.DescriptorProto, prefix: str) -> Iterator[tuple]:
        for field in message.field:
            yield f"{prefix}{message.name}", field.name, field.number, field.type, field.label, field.type_name
        for nested in message.nested_type:
            yield from fields(nested, f"{prefix}{message.name}.")

    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    triton_fields = {field for message in theirs.message_type for field in fields(message, "")}
    our_fields = {field for message in ours.message_type for field in fields(message, "")}
    assert our_fields and our_fields <= triton_fields, our_fields - triton_fields
    [service] = ours.service
    triton_methods = {method.name: method for method in theirs.service[0].method}
    assert (ours.package, service.name) == (theirs.package, theirs.service[0].name)
    for method in service.method:
        assert (method.input_type, method.output_type) == (triton_methods[method.name].input_type,
                                                           triton_methods[method.name].output_type)


def test_the_generated_code_is_what_the_proto_generates(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", PROTO], cwd=ROOT, check=True)
    for name in GENERATED:
        fresh = (tmp_path / Path(PROTO).parent / name).read_text()
        assert (ROOT / Path(PROTO).parent / name).read_text() == fresh, (
            f"{name} is stale: regenerate it as the header of {PROTO} says")


@pytest.fixture()
def start_server(model_store, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def start(env: dict[str, str], wait_ready: bool = True) -> LiveServer:
        live = LiveServer(env={**SERVED, **env})
        started.append(live)
        return live.start(tmp_path / f"server{len(started)}.log", wait_ready=wait_ready)

    yield start
    for live in started:
        live.stop()


def listening_ports(live: LiveServer) -> set[int]:
    return {c.laddr.port for c in psutil.Process(live.process.pid).net_connections("inet") if c.status == "LISTEN"}


def test_grpc_port_0_listens_for_nothing_but_http(start_server, grpc_server):
    assert listening_ports(grpc_server.live) == {grpc_server.live.port, int(grpc_server.address.rsplit(":")[1])}
    live = start_server({"YOSO_GRPC_PORT": "0"}, wait_ready=False)
    live.wait_until("/healthz", 60)  # the lifespan has run: a gRPC server would listen by now
    assert listening_ports(live) == {live.port}
    assert "gRPC" not in live.log()


def test_a_drain_lets_a_grpc_call_in_flight_finish(start_server):
    port = free_port()
    live = start_server({"YOSO_GRPC_PORT": str(port), "YOSO_MAX_QUEUE_WAIT_MS": "60000"})
    answers: queue.Queue = queue.Queue()
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client, httpx.Client(base_url=live.url) as http:
        client.async_infer(MODEL, [images(*["dog_person_horse.jpg"] * 12)],
                           callback=lambda result, error: answers.put((result, error)))
        assert eventually(lambda: not answers.empty() or value(scrape(http), "yoso_requests_waiting", model=MODEL), 30)
        assert answers.empty(), answers.get()  # still in flight: images wait for the one worker
        live.process.send_signal(signal.SIGTERM)
        result, error = answers.get(timeout=60)
    assert error is None, error
    assert list(result.as_numpy("num_detections")[:, 0]) == [3] * 12
    assert live.process.wait(60) == 0


def test_a_grpc_port_in_use_stops_start_up_with_one_line_naming_it(start_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        live = start_server({"YOSO_GRPC_PORT": str(port)}, wait_ready=False)
        assert live.process.wait(60) == 1
    last_line = live.log().strip().splitlines()[-1]
    assert last_line.startswith(f"yoso: cannot listen for gRPC on 127.0.0.1:{port}: is the port in use?")
    assert "Traceback" not in live.log()
