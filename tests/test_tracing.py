"""Traces from a real server process, as the exporters put them on the wire.

No Zipkin server or OpenTelemetry collector can be installed here, so each test runs a loopback HTTP
receiver that stands in for one: it decodes what the exporters post (Zipkin v2 JSON; OTLP protobuf, as
opentelemetry-proto defines it) and the tests assert the span tree (server span -> queue / decode /
inference / encode), the service name and the attributes. Spans are flushed every 100 ms (OTEL_BSP_SCHEDULE_DELAY).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from tests.loopback import SpanReceiver
from tests.support import ROOT, LiveServer, eventually, free_port, image_bytes
from yoso.config import load_settings
from yoso.observability.tracing import tracer_provider

TRACED = {
    "YOSO_OTEL_INSTRUMENT": "true",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "YOSO_WORKERS": "1",
    "YOSO_PRELOAD_MODELS": "yolov3-tiny",
}


def whole_lines(live: LiveServer) -> list[str]:
    """The log's lines written in full: a line the server is still writing is left for the next read."""
    text = live.log()
    return text[:text.rfind("\n") + 1].splitlines()


def wait_for(found: Callable[[], list], timeout_s: float = 30) -> list:
    """What `found()` returns once it is not empty (the spans a test waits for have arrived)."""
    result: list = []

    def arrived() -> bool:
        nonlocal result
        result = found()
        return bool(result)

    assert eventually(arrived, timeout_s), "the expected spans never arrived"
    return result


def upload(name: str) -> dict:
    return {"file": (name, image_bytes(name), "image/jpeg")}


@pytest.fixture()
def receiver() -> Iterator[SpanReceiver]:
    receiver = SpanReceiver()
    yield receiver
    receiver.close()


@pytest.fixture()
def start_server(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], LiveServer]]:
    started: list[LiveServer] = []

    def start(env: dict[str, str]) -> LiveServer:
        live = LiveServer(env={**TRACED, **env})
        started.append(live)
        return live.start(tmp_path / f"server{len(started)}.log")

    yield start
    for live in started:
        live.stop()


def zipkin_tree(spans: list[dict], path: str) -> tuple[dict, dict[str, dict]]:
    """The server span of the request to `path` and its children by name."""
    [root] = [s for s in spans if s.get("kind") == "SERVER" and s["tags"].get("http.target", "").startswith(path)]
    children = {s["name"]: s for s in spans if s.get("parentId") == root["id"]}
    return root, children


def test_zipkin_gets_the_server_span_with_queue_decode_inference_and_encode_children(receiver, start_server):
    live = start_server({"YOSO_OTEL_INSTRUMENT_EXPORTER": "zipkin", "YOSO_SERVICE_NAME": "yoso-under-test",
                         "YOSO_ZIPKIN_ENDPOINT": receiver.url + "/api/v2/spans"})
    with httpx.Client(base_url=live.url, timeout=60) as http:
        detected = http.post("/detect", params={"confidence": 0.4}, files=upload("dog_person_horse.jpg")).json()
        assert http.post("/predict", files=upload("fruits.jpg")).status_code == 200
        http.get("/metrics")
        http.get("/healthz")  # spans are exported in the order they end: this one comes after /metrics
    spans = wait_for(lambda: [s for s in receiver.zipkin_spans() if s["tags"].get("http.target") == "/healthz"]
                     and receiver.zipkin_spans())

    assert {post.headers["content-type"] for post in receiver.posts} == {"application/json"}
    assert {span["localEndpoint"]["serviceName"] for span in spans} == {"yoso-under-test"}
    assert not [s for s in spans if "/metrics" in json.dumps(s)]

    root, children = zipkin_tree(spans, "/detect")
    assert root["name"] == "POST /detect" and "parentId" not in root
    assert set(children) == {"queue", "decode", "inference"}  # /detect draws and encodes nothing
    inference = children["inference"]["tags"]
    assert inference["yoso.model"] == "yolov3-tiny"
    assert (inference["yoso.model.engine"], inference["yoso.model.precision"]) == ("openvino", "f32")
    assert float(inference["yoso.confidence"]) == 0.4
    assert (int(inference["yoso.image.width"]), int(inference["yoso.image.height"])) == (
        detected["width"], detected["height"])
    assert int(inference["yoso.detections"]) == len(detected["detections"]) > 0
    assert abs(children["inference"]["duration"] / 1000 - detected["inference_ms"]) < 1

    root, children = zipkin_tree(spans, "/predict")
    assert set(children) == {"queue", "decode", "inference", "encode"}
    order = [children[name]["timestamp"] for name in ("queue", "decode", "inference", "encode")]
    assert order == sorted(order) and len(set(order)) == 4
    for child in children.values():
        assert child["traceId"] == root["traceId"]
        assert root["timestamp"] <= child["timestamp"]
        assert child["timestamp"] + child["duration"] <= root["timestamp"] + root["duration"]

    access = wait_for(lambda: [line for line in live.log().splitlines() if " yoso.access: POST /predict 200 " in line])
    assert access[-1].endswith(f"trace_id={root['traceId']}")


def test_otlp_carries_the_same_tree_and_otel_service_name_wins(receiver, start_server):
    live = start_server({"YOSO_OTEL_INSTRUMENT_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                         "OTEL_SERVICE_NAME": "named-by-the-platform", "YOSO_SERVICE_NAME": "yoso-under-test",
                         "YOSO_LOG_FORMAT": "json"})
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.post("/predict", params={"confidence": 0.3}, files=upload("car2.jpg")).status_code == 200

    def server_span_arrived() -> list:
        return [s for r in receiver.otlp_requests() for rs in r.resource_spans for ss in rs.scope_spans
                for s in ss.spans if s.kind == OtlpSpan.SPAN_KIND_SERVER and s.name == "POST /predict"]

    [root] = wait_for(server_span_arrived)
    assert {post.path for post in receiver.posts} == {"/v1/traces"}
    assert {post.headers["content-type"] for post in receiver.posts} == {"application/x-protobuf"}
    resource_spans = [rs for r in receiver.otlp_requests() for rs in r.resource_spans]
    names = {a.value.string_value for rs in resource_spans for a in rs.resource.attributes if a.key == "service.name"}
    assert names == {"named-by-the-platform"}
    spans = [s for rs in resource_spans for ss in rs.scope_spans for s in ss.spans]
    children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    assert set(children) == {"queue", "decode", "inference", "encode"}
    attributes = {a.key: a.value for a in children["inference"].attributes}
    assert attributes["yoso.model"].string_value == "yolov3-tiny"
    assert attributes["yoso.model.engine"].string_value == "openvino"
    assert attributes["yoso.confidence"].double_value == 0.3
    assert (attributes["yoso.image.width"].int_value, attributes["yoso.image.height"].int_value) == (275, 183)
    assert attributes["yoso.detections"].int_value >= 2
    for child in children.values():
        assert child.trace_id == root.trace_id
        assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano

    def access_lines() -> list[dict]:  # written within a moment of the request (yoso.observability.deferred)
        lines = [json.loads(line) for line in whole_lines(live) if line.strip()]  # every line is JSON
        return [line for line in lines if line["logger"] == "yoso.access" and line["path"] == "/predict"]

    [access] = wait_for(access_lines)
    lines = [json.loads(line) for line in whole_lines(live) if line.strip()]
    assert access["method"] == "POST" and access["status"] == 200 and access["duration_ms"] > 0
    assert access["trace_id"] == root.trace_id.hex()
    assert {line["service"] for line in lines} == {"named-by-the-platform"}  # logs name the service as traces do


# The line each exporter logs when an export attempt fails (ours for Zipkin, the SDK's for OTLP).
EXPORT_FAILED = {"zipkin": "could not send", "otlp": "Failed to export spans batch"}


@pytest.mark.parametrize("exporter", ["zipkin", "otlp"])
def test_a_collector_that_is_down_fails_no_request(exporter, start_server):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    live = start_server({"YOSO_OTEL_INSTRUMENT_EXPORTER": exporter, "YOSO_ZIPKIN_ENDPOINT": closed + "/api/v2/spans",
                         "OTEL_EXPORTER_OTLP_ENDPOINT": closed, "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})

    def failed_exports() -> int:
        return sum(EXPORT_FAILED[exporter] in line for line in live.log().splitlines())

    with httpx.Client(base_url=live.url, timeout=60) as http:
        for _ in range(3):
            failed_before = failed_exports()
            assert http.post("/count_objects", files=upload("car.jpg")).json() == {"items": {"car": 1}}
            # the next request comes after an export attempt has failed (this request's spans, at the latest)
            assert eventually(lambda: failed_exports() > failed_before, timeout_s=30), live.log()
        assert http.get("/readyz").status_code == 200

    def traced() -> list[str]:
        return [line for line in live.log().splitlines() if "POST /count_objects 200" in line and "trace_id=" in line]

    assert eventually(lambda: len(traced()) == 3, timeout_s=10), live.log()
    assert "Traceback" not in live.log()  # a failed export is a warning line, not a stack trace


def test_a_sampled_out_request_exports_no_span_and_logs_no_trace_id(start_server):
    live = start_server({"YOSO_OTEL_INSTRUMENT_EXPORTER": "console", "YOSO_OTEL_SAMPLING_RATIO": "0",
                         "YOSO_LOG_FORMAT": "json", "YOSO_SERVICE_NAME": "yoso-under-test"})
    # Sampling is parent-based: a request whose caller sampled its trace is traced even at ratio 0. Its span
    # is exported after any span of the requests before it (spans leave in the order they end), so once it is
    # on the console, a span of the sampled-out requests would be there too.
    marker = "0af7651916cd43dd8448eb211c80319c"
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.post("/detect", files=upload("car.jpg")).status_code == 200
        assert http.get("/healthz").status_code == 200
        assert http.get("/healthz", headers={"traceparent": f"00-{marker}-b7ad6b7169203331-01"}).status_code == 200

    def lines() -> list[dict]:
        return [json.loads(line) for line in whole_lines(live) if line.strip()]  # every line is JSON

    [span] = wait_for(lambda: [line for line in lines() if "context" in line])  # the console span of the marker
    wait_for(lambda: [line for line in lines() if "trace_id" in line])  # its access line, after the others'
    assert span["context"]["trace_id"] == f"0x{marker}" and span["name"] == "GET /healthz"
    logs = [line for line in lines() if "context" not in line]
    assert [line["path"] for line in logs if "trace_id" in line] == ["/healthz"]  # the marker's access line only
    access = [line for line in logs if line.get("logger") == "yoso.access" and "trace_id" not in line]
    assert [line["path"] for line in access if line["path"] != "/readyz"] == ["/detect", "/healthz"]  # after start
    assert {line["service"] for line in logs} == {"yoso-under-test"}


def test_tracing_works_in_dev_mode_with_spans_on_the_console(start_server):
    live = start_server({"YOSO_DEV_MODE": "true", "YOSO_OTEL_INSTRUMENT_EXPORTER": "console"})
    with httpx.Client(base_url=live.url, timeout=60) as http:
        assert http.post("/detect", files=upload("car.jpg")).status_code == 200

    def console_spans() -> list[dict]:
        return [json.loads(line) for line in whole_lines(live) if line.startswith('{"name": ')]

    spans = wait_for(lambda: [s for s in console_spans() if s["name"] == "POST /detect"] and console_spans())
    [root] = [s for s in spans if s["name"] == "POST /detect"]
    children = {s["name"] for s in spans if s["parent_id"] == root["context"]["span_id"]}
    assert children == {"queue", "decode", "inference"}
    assert root["resource"]["attributes"]["service.name"] == "yoso"
    trace_id = root["context"]["trace_id"].removeprefix("0x")
    assert wait_for(lambda: [line for line in live.log().splitlines() if " yoso.access: POST /detect 200 " in line
                             and line.endswith(f"trace_id={trace_id}")])


def test_an_unknown_exporter_stops_start_up_with_one_clear_line():
    result = subprocess.run(
        [sys.executable, "-m", "yoso.server"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "YOSO_OTEL_INSTRUMENT": "true",
             "YOSO_OTEL_INSTRUMENT_EXPORTER": "jaeger", "YOSO_PORT": str(free_port())},
    )
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "yoso: bad setting YOSO_OTEL_INSTRUMENT_EXPORTER='jaeger': Input should be 'console', 'zipkin' or 'otlp'")


def test_sampling_is_parent_based_at_the_configured_ratio():
    provider = tracer_provider(load_settings(otel_sampling_ratio=0.25))
    try:
        assert provider.sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.25}")
    finally:
        provider.shutdown()
