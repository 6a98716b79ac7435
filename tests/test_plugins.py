"""The plug-in contract end to end: a class written outside the repo, following only the README (its code block
is the module served here, as it is), through a real server process with its workers, batching, admission,
metrics, traces (to a loopback Zipkin receiver: no Zipkin server installs here), the client and the CLI; the
classes that break the contract (tests/misbehaving_models.py) get clear errors; `yoso check` passes and fails
as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from tests.loopback import SpanReceiver
from tests.support import ROOT, LiveServer, eventually, file_field, free_port, http_client, scrape, value
from yosoclient import Client
from yosoclient.cli import main as yosoclient_cli

README_BLOCK = "<!-- the plug-in example: tests/test_plugins.py serves this block as it is -->\n```python\n"
MISBEHAVING = ("Raises", "Miscounts", "Picky", "Hangs", "FailsSetup", "Unreadable")
SERVED = ["red-blobs", "doubler", "raises", "miscounts", "picky", "hangs", "fails-setup", "unreadable"]  # by name
RED_SQUARES = [(20, 30, 80, 90), (150, 40, 250, 100)]  # x1, y1, x2, y2 (exclusive)


def readme_module(directory: Path) -> Path:
    """The README's plug-in example, saved as my_models.py in a directory outside the repo."""
    block = (ROOT / "README.md").read_text().split(README_BLOCK, 1)[1].split("```", 1)[0]
    (directory / "my_models.py").write_text(block)
    return directory


def red_squares_png() -> bytes:
    image = np.full((160, 300, 3), 255, np.uint8)
    for x1, y1, x2, y2 in RED_SQUARES:
        image[y1:y2, x1:x2] = (0, 0, 220)  # BGR
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.fixture(scope="module")
def receiver() -> Iterator[SpanReceiver]:
    receiver = SpanReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory, receiver: SpanReceiver) -> Iterator[LiveServer]:
    user_dir = readme_module(tmp_path_factory.mktemp("user"))
    classes = ["my_models:RedBlobs", "my_models:Doubler", *(f"tests.misbehaving_models:{c}" for c in MISBEHAVING)]
    env = {"PYTHONPATH": str(user_dir), "YOSO_MODEL_CLASS": ",".join(classes),
           "YOSO_PRELOAD_MODELS": "red-blobs,doubler,hangs", "YOSO_WORKERS": "2",
           "YOSO_MAX_BATCH_SIZE": "8", "YOSO_MAX_BATCH_DELAY_MS": "100", "YOSO_REQUEST_TIMEOUT_S": "4",
           "YOSO_OTEL_INSTRUMENT": "true", "YOSO_OTEL_INSTRUMENT_EXPORTER": "zipkin",
           "YOSO_ZIPKIN_ENDPOINT": receiver.url + "/api/v2/spans", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    live = LiveServer(env=env).start(tmp_path_factory.mktemp("plugins") / "server.log")
    yield live
    live.stop()


@pytest.fixture()
def http(plugins: LiveServer) -> Iterator[httpx.Client]:
    yield from http_client(plugins)


def test_the_readme_detector_is_served_with_detections_counts_and_an_annotated_jpeg(http):
    found = http.post("/detect", params={"model": "red-blobs"}, files=file_field(red_squares_png())).json()
    assert (found["model"], found["width"], found["height"]) == ("red-blobs", 300, 160)
    assert [(d["label"], d["box"]) for d in found["detections"]] == [("red", list(box)) for box in RED_SQUARES]
    counted = http.post("/count_objects", params={"model": "red-blobs"}, files=file_field(red_squares_png()))
    assert counted.json() == {"items": {"red": 2}}
    annotated = http.post("/predict", params={"model": "red-blobs"}, files=file_field(red_squares_png()))
    assert annotated.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(annotated.content, np.uint8), cv2.IMREAD_COLOR).shape == (160, 300, 3)


def test_the_first_class_is_the_default_model_and_models_lists_each_class_with_its_kind(http):
    listed = http.get("/models").json()
    assert listed["default"] == "red-blobs"
    by_name = {model["name"]: model for model in listed["models"]}
    assert list(by_name) == SERVED
    assert by_name["red-blobs"] | {"workers_loaded": 2} == {
        "name": "red-blobs", "installed": True, "loaded": True, "workers_loaded": 2, "classes": 1,
        "download_bytes": 0, "kind": "detector", "model_class": "my_models:RedBlobs",
        "version": 1, "versions": [],  # no directory in the model repository: its class's own, version 1
        "engine": "", "precision": ""}  # it declares neither
    assert (by_name["doubler"]["kind"], by_name["doubler"]["classes"]) == ("json", None)
    assert http.post("/count_objects", files=file_field(red_squares_png())).json() == {"items": {"red": 2}}


def test_a_json_model_answers_kserve_v1_in_the_batches_the_scheduler_built(http):
    before = scrape(http)

    def predict(i: int) -> list:
        answer = http.post("/v1/models/doubler:predict", json={"instances": [i, i + 0.5]})
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(predict, range(8))) == [[2 * i, 2 * i + 1] for i in range(8)]
    after = scrape(http)

    def delta(name: str) -> float:
        return value(after, name, model="doubler", statistic="batch_size") - value(
            before, name, model="doubler", statistic="batch_size")

    assert delta("yoso_model_statistic_sum") == 16  # every instance, recorded by the class itself
    assert delta("yoso_model_statistic_count") < 8  # in fewer batches than requests: they were batched
    assert http.get("/v1/models").json() == {"models": SERVED}
    assert http.get("/v1/models/doubler").json() == {"name": "doubler", "ready": True}


def test_a_json_model_that_declares_no_tensors_answers_the_open_inference_protocol_row_by_row(http):
    metadata = http.get("/v2/models/doubler").json()
    assert metadata["platform"] == "yoso_json" and metadata["inputs"] == []
    assert metadata["outputs"] == [{"name": "OUTPUT", "datatype": "BYTES", "shape": [-1]}]
    answer = http.post("/v2/models/doubler/infer",
                       json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], "data": [1, 2.5, -4]}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [{"name": "OUTPUT", "datatype": "BYTES", "shape": [3], "data": ["2", "5.0", "-8"]}]
    two = http.post("/v2/models/doubler/infer", json={"inputs": [
        {"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}, {"name": "y", "datatype": "FP64", "shape": [1], "data": [1]}]})
    assert two.status_code == 400 and "takes one input tensor" in two.json()["error"]


def test_metrics_and_traces_carry_the_plugins_name_and_time_each_step_of_its_class(http, receiver):
    assert http.post("/detect", params={"model": "red-blobs"}, files=file_field(red_squares_png())).status_code == 200
    samples = scrape(http)
    for stage in ("preprocess", "predict"):
        assert value(samples, "yoso_stage_seconds_count", model="red-blobs", stage=stage) >= 1
    assert value(samples, "yoso_images_processed_total", model="red-blobs", endpoint="/detect") >= 1
    assert value(samples, "yoso_detections_total", model="red-blobs", label="red") >= 2
    assert value(samples, "yoso_instances_processed_total", model="doubler") >= 16

    def inference_with_steps() -> list[tuple[dict, set[str]]]:
        spans = receiver.zipkin_spans()
        return [(s, {c["name"] for c in spans if c.get("parentId") == s["id"]}) for s in spans
                if s["name"] == "inference" and s["tags"].get("yoso.model") == "red-blobs"]

    assert eventually(lambda: any(steps == {"preprocess", "predict"} for _, steps in inference_with_steps()), 30)


def test_a_class_that_raises_gets_a_500_naming_the_model_and_the_server_carries_on(http, plugins):
    failed = http.post("/detect", params={"model": "raises"}, files=file_field(red_squares_png()))
    assert failed.status_code == 500
    detail = failed.json()["detail"]
    assert "raises" in detail and "ValueError: this model always fails" in detail and "Traceback" not in detail
    assert eventually(lambda: "Traceback" in plugins.log() and "this model always fails" in plugins.log())
    assert http.post("/count_objects", params={"model": "red-blobs"},
                     files=file_field(red_squares_png())).json() == {"items": {"red": 2}}


def test_a_model_whose_setup_fails_on_first_use_answers_500_naming_it(http):
    failed = http.post("/detect", params={"model": "fails-setup"}, files=file_field(red_squares_png()))
    assert failed.status_code == 500
    assert failed.json()["detail"] == ("model fails-setup: setting up tests.misbehaving_models:FailsSetup failed: "
                                       "FileNotFoundError: weights.bin is not where it was expected")


def test_a_result_of_the_wrong_length_is_a_clear_error(http):
    failed = http.post("/detect", params={"model": "miscounts"}, files=file_field(red_squares_png()))
    assert failed.status_code == 500
    assert "model miscounts: predict returned 0 results for 1 inputs" in failed.json()["detail"]


def test_an_input_the_model_refuses_gets_422_and_the_rest_of_its_batch_is_answered(http):
    def predict(instances: list) -> httpx.Response:
        return http.post("/v1/models/picky:predict", json={"instances": instances})

    with ThreadPoolExecutor(4) as pool:  # one batch (YOSO_MAX_BATCH_DELAY_MS), one bad request in it
        answers = list(pool.map(predict, [[1], ["one"], [3, 4], [5]]))
    assert [a.status_code for a in answers] == [200, 422, 200, 200]
    samples = scrape(http)
    seen = value(samples, "yoso_model_statistic_sum", model="picky", statistic="instances_seen")
    assert seen > 5  # the batch was refused as a whole, then each request ran alone
    # what setup recorded, in the two workers that set it up on first use, under its own name
    assert value(samples, "yoso_model_statistic_count", model="picky", statistic="setups") in (1, 2)
    assert not [key for key in samples if dict(key[1]).get("statistic") == "setups" and
                dict(key[1]).get("model") != "picky"]
    assert answers[1].json()["detail"] == "model picky cannot take this input: every instance must be a number"
    assert [a.json()["predictions"] for a in answers if a.status_code == 200] == [[-1], [-3, -4], [-5]]


def test_each_kind_of_model_refuses_the_other_kinds_input_and_bad_bodies_with_4xx(http):
    wrong_kind = http.post("/detect", params={"model": "doubler"}, files=file_field(red_squares_png()))
    assert wrong_kind.status_code == 422 and "/v1/models/doubler:predict" in wrong_kind.json()["detail"]
    assert http.post("/v1/models/red-blobs:predict", json={"instances": [1]}).status_code == 422
    assert http.post("/v1/models/nobody:predict", json={"instances": [1]}).status_code == 404
    for body in (b"not json", b"[1, 2]", b'{"instances": []}', b'{"instances": 3}'):
        bad = http.post("/v1/models/doubler:predict", content=body, headers={"content-type": "application/json"})
        assert bad.status_code == 422 and bad.json()["detail"]


def test_the_client_and_its_cli_work_for_a_plugin(plugins, tmp_path):
    image = tmp_path / "squares.png"
    image.write_bytes(red_squares_png())
    with Client(plugins.url) as client:
        assert client.count_objects(image, model="red-blobs") == {"red": 2}
        assert client.infer("doubler", [1, [2]]) == [2, [2, 2]]
    result = CliRunner().invoke(yosoclient_cli, ["--url", plugins.url, "--model", "red-blobs", "count", "--json",
                                                 str(image)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {str(image): {"red": 2}}
    inferred = CliRunner().invoke(yosoclient_cli, ["--url", plugins.url, "infer", "doubler", "[3, 4]"])
    assert (inferred.exit_code, inferred.output) == (0, "[6, 8]\n")
    listed = CliRunner().invoke(yosoclient_cli, ["--url", plugins.url, "models"]).output
    assert "doubler" in listed and "json" in listed.splitlines()[2] and "detector" in listed


def test_a_message_from_a_worker_that_cannot_be_read_replaces_the_worker_and_its_request_gets_500(http, plugins):
    before = value(scrape(http), "yoso_workers_replaced_total", reason="died")
    assert http.post("/v1/models/unreadable:predict", json={"instances": [1]}).json() == {"predictions": [1]}
    failed = http.post("/v1/models/unreadable:predict", json={"instances": ["unreadable"]})
    assert failed.status_code == 500 and "A new worker is starting" in failed.json()["detail"]
    assert eventually(lambda: value(scrape(http), "yoso_workers_replaced_total", reason="died") == before + 1, 15)
    log = plugins.log()
    assert "sent a message that failed; replacing the worker" in log and "cannot be read back" in log
    assert "Fatal error" not in log  # handled by the pool, not left to the event loop
    assert http.post("/v1/models/doubler:predict", json={"instances": [4]}).json() == {"predictions": [8]}
    assert eventually(lambda: http.get("/readyz").status_code == 200 and len(
        [m for m in http.get("/models").json()["models"] if m["name"] == "doubler" and m["workers_loaded"] == 2]), 60)


def test_the_watchdog_replaces_a_worker_whose_plugin_hangs_and_the_others_carry_on(http):
    before = value(scrape(http), "yoso_workers_replaced_total", reason="hung")
    hung = http.post("/v1/models/hangs:predict", json={"instances": [60]}, headers={"X-Yoso-Timeout-Ms": "1500"})
    assert hung.status_code == 504
    # killed at the server's bound (YOSO_REQUEST_TIMEOUT_S), the request having been answered at its own
    assert eventually(lambda: value(scrape(http), "yoso_workers_replaced_total", reason="hung") == before + 1, 15)
    assert http.post("/v1/models/doubler:predict", json={"instances": [4]}).json() == {"predictions": [8]}
    assert eventually(lambda: http.get("/readyz").status_code == 200 and len(
        [m for m in http.get("/models").json()["models"] if m["name"] == "hangs" and m["workers_loaded"] == 2]), 60)


def test_readyz_turns_200_only_once_setup_has_run_in_every_worker(tmp_path):
    go = tmp_path / "go"
    live = LiveServer(env={"YOSO_MODEL_CLASS": "tests.misbehaving_models:WaitsForGo", "YOSO_WORKERS": "2",
                           "YOSO_MODEL_ARGS": json.dumps({"go": str(go)})})
    live.start(tmp_path / "server.log", wait_ready=False)
    try:
        with httpx.Client(base_url=live.url, timeout=10) as http:
            assert eventually(lambda: _answers(http, "/healthz"), 60)
            assert http.get("/readyz").json() == {"status": "starting"}
            assert http.post("/v1/models/waits-for-go:predict", json={"instances": [1]}).status_code == 503
            go.touch()
            assert eventually(lambda: http.get("/readyz").status_code == 200, 60)
            assert http.post("/v1/models/waits-for-go:predict", json={"instances": [1]}).json() == {
                "predictions": [1]}
    finally:
        live.stop()


def _answers(http: httpx.Client, path: str) -> bool:
    try:
        return http.get(path).status_code == 200
    except httpx.TransportError:
        return False


def yoso_check(*arguments: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("YOSO_")}
    variables["PYTHONPATH"] = os.pathsep.join([str(ROOT), variables.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "yoso", "check", *arguments], cwd=cwd, env=variables | env,
                          capture_output=True, text=True, timeout=120)


def test_yoso_check_sets_the_class_up_once_and_prints_the_plan(tmp_path):
    readme_module(tmp_path)
    done = yoso_check("my_models:RedBlobs", cwd=tmp_path, YOSO_MODEL_ARGS='{"min_area": 80}', YOSO_WORKERS="2",
                      YOSO_MAX_BATCH_SIZE="4", YOSO_PORT="9100")
    assert done.returncode == 0, done.stderr
    plan = done.stdout
    for expected in ("red-blobs: my_models:RedBlobs, a detector model; 1 label: red", "arguments: {'min_area': 80}",
                     "set up on cpu and ran a blank image", "default model: red-blobs", "workers: 2 processes",
                     "up to 4 requests per batch", "http://0.0.0.0:9100", "POST /detect", "yoso check: ok"):
        assert expected in plan


@pytest.mark.parametrize(("target", "env", "problem"), [
    ("nowhere:Model", {}, "yoso: cannot import nowhere for nowhere:Model: ModuleNotFoundError"),
    ("json:JSONDecoder", {}, "yoso: json:JSONDecoder is not a class derived from yoso.Model or yoso.Detector"),
    ("tests.misbehaving_models:FailsSetup", {}, "yoso check: model fails-setup: setting up "
     "tests.misbehaving_models:FailsSetup failed: FileNotFoundError: weights.bin is not where it was expected"),
    ("my_models:RedBlobs", {"YOSO_MODEL_ARGS": '{"min_area": 80, "colour": "red"}'}, "unexpected keyword argument"),
    ("my_models:RedBlobs", {"YOSO_MODEL_ARGS": "{min_area: 80"}, "yoso: bad setting YOSO_MODEL_ARGS="),
    ("", {"YOSO_MODEL_CLASS": " , "}, "yoso: bad setting YOSO_MODEL_CLASS: it names no model class"),
])
def test_yoso_check_fails_with_one_line_and_exit_1(tmp_path, target, env, problem):
    readme_module(tmp_path)
    done = yoso_check(*[target] if target else [], cwd=tmp_path, **env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert problem in done.stderr


def test_a_setup_that_raises_stops_the_server_with_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "YOSO_MODEL_CLASS": "tests.misbehaving_models:FailsSetup", "YOSO_WORKERS": "1",
           "YOSO_HOST": "127.0.0.1", "YOSO_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "yoso", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "yoso: could not start the inference workers: model fails-setup: setting up "
        "tests.misbehaving_models:FailsSetup failed: FileNotFoundError: weights.bin is not where it was expected")


def test_with_several_classes_model_args_is_keyed_by_model_name(tmp_path):
    readme_module(tmp_path)
    classes = "my_models:RedBlobs,my_models:Doubler,yoso.model.yolo:Yolov3Tiny"
    keyed = yoso_check(cwd=tmp_path, YOSO_MODEL_CLASS=classes, YOSO_MODEL_ARGS='{"red-blobs": {"min_area": 80}}')
    assert keyed.returncode == 0, keyed.stderr
    assert "arguments: {'min_area': 80}" in keyed.stdout and keyed.stdout.count("arguments:") == 1
    flat = yoso_check(cwd=tmp_path, YOSO_MODEL_CLASS=classes, YOSO_MODEL_ARGS='{"min_area": 80}')
    assert flat.returncode == 1 and "Traceback" not in flat.stderr
    assert "YOSO_MODEL_ARGS: with several model classes it is keyed by model name" in flat.stderr
    assert "not a served model with an object of arguments: min_area" in flat.stderr


def test_a_class_name_that_is_not_in_the_module_lists_the_model_classes_that_are(tmp_path):
    readme_module(tmp_path)
    done = yoso_check("my_models:RedBlob", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "yoso: module my_models has no RedBlob (its model classes: RedBlobs, Doubler)"
