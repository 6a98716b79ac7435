"""The admin endpoints on a live server: the log level, set at run time in the server process and in every
worker (and every replacement), the work in flight, and both behind the API key when keys are set."""

from __future__ import annotations

import errno
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import yoso
from tests.live_server import poll_until
from tests.support import LiveServer, image_bytes, inference_workers, serving

KEY = "admin-test-key"
AUTH = {"X-API-Key": KEY}
GATE_VARIABLE = "ADMIN_TEST_GATE"  # the FIFO that WaitsAtTheGate reads; the workers inherit the server's environment
WORKER_TASK_LINE = re.compile(  # the worker's pid, from its debug line for each task
    r" DEBUG yoso\.serving\.worker\[(\d+)\]: task of 1 inputs for model yolov3-tiny on \d+ threads$", re.MULTILINE)


class WaitsAtTheGate(yoso.Model):
    """Each task waits until the test opens the gate: work in flight for exactly as long as a test wants."""

    def __init__(self) -> None:
        self.gate = Path(os.environ[GATE_VARIABLE])

    def predict(self, instances):
        self.gate.read_bytes()  # a FIFO: blocks until the test writes to it and closes it
        return instances


def open_the_gate(gate: Path) -> bool:
    """Let one waiting task through; False while no task waits at the gate (no reader has the FIFO open)."""
    try:
        fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:
            return False
        raise
    os.write(fd, b"go")
    os.close(fd)
    return True


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    fifo = tmp_path_factory.mktemp("gate") / "gate"
    os.mkfifo(fifo)
    return fifo


@pytest.fixture(scope="module")
def keyed(model_store, gate, tmp_path_factory):
    """One worker, an API key, the zoo's yolov3-tiny and a model that waits at the gate."""
    env = {"YOSO_WORKERS": "1", "YOSO_API_KEY": KEY, "YOSO_MAX_QUEUE_WAIT_MS": "60000",
           "YOSO_MODEL_CLASS": "yoso.model.yolo:Yolov3Tiny,tests.test_admin:WaitsAtTheGate", GATE_VARIABLE: str(gate)}
    yield from serving(env, tmp_path_factory.mktemp("admin"))


@pytest.fixture()
def restored(client):
    """The shared server's client; the server's log level is put back as it was after the test."""
    before = client.get("/admin/log-level").json()["level"]
    yield client
    assert client.put("/admin/log-level", json={"level": before}).status_code == 200


def count_objects(http: httpx.Client, **headers: str) -> None:
    files = {"file": ("car.jpg", image_bytes("car.jpg"), "image/jpeg")}
    response = http.post("/count_objects", params={"model": "yolov3-tiny"}, files=files, headers=headers)
    assert response.status_code == 200, response.text


def test_the_log_level_is_read_and_set_in_any_case(restored):
    assert restored.get("/admin/log-level").json() == {"level": "info"}  # YOSO_LOG_LEVEL's default
    assert restored.put("/admin/log-level", json={"level": "WarNing"}).json() == {"level": "warning"}
    assert restored.get("/admin/log-level").json() == {"level": "warning"}


@pytest.mark.parametrize("body", [b'{"level": "verbose"}', b'{"level": 10}', b'{"level": ""}', b"{}", b'"debug"',
                                  b"debug", b"", b'{"level": "\xff"}'],
                         ids=["unknown", "a-number", "empty", "no-level", "not-an-object", "not-json", "no-body",
                              "not-utf-8"])
def test_anything_but_a_level_is_422_and_changes_nothing(restored, body):
    before = restored.get("/admin/log-level").json()
    response = restored.put("/admin/log-level", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert restored.get("/admin/log-level").json() == before


def test_debug_set_over_http_reaches_the_workers_at_once_and_warning_silences_server_and_workers(server, restored):
    http = restored

    def worker_lines() -> list[str]:
        return WORKER_TASK_LINE.findall(server.log())

    def access_lines(request: str) -> int:
        return server.log().count(f" yoso.access: {request} 200 ")

    logged, posted = len(worker_lines()), access_lines("POST /count_objects")
    assert http.put("/admin/log-level", json={"level": "debug"}).json() == {"level": "debug"}
    count_objects(http)
    assert poll_until(lambda: len(worker_lines()) == logged + 1, 10), server.log()[-3000:]
    assert int(worker_lines()[-1]) in {worker.pid for worker in inference_workers(server.process.pid)}
    assert poll_until(lambda: access_lines("POST /count_objects") == posted + 1, 10), server.log()[-3000:]
    posted, put = posted + 1, access_lines("PUT /admin/log-level")

    http.put("/admin/log-level", json={"level": "warning"})
    count_objects(http)
    assert len(worker_lines()) == logged + 1  # a worker writes its line before it answers: it would be there by now
    # Back to info; once that request's access line is written, the one of the request above would be too.
    http.put("/admin/log-level", json={"level": "info"})
    assert poll_until(lambda: access_lines("PUT /admin/log-level") == put + 1, 10), server.log()[-3000:]
    assert access_lines("POST /count_objects") == posted


def test_a_replacement_worker_starts_at_the_level_set(keyed):
    with httpx.Client(base_url=keyed.url, headers=AUTH, timeout=60) as http:
        http.put("/admin/log-level", json={"level": "debug"})
        try:
            [killed] = inference_workers(keyed.process.pid)
            killed.kill()

            def replaced() -> bool:
                pids = [worker.pid for worker in inference_workers(keyed.process.pid)]
                return bool(pids) and killed.pid not in pids and http.get("/readyz").status_code == 200

            assert poll_until(replaced, 60), keyed.log()[-3000:]
            [replacement] = inference_workers(keyed.process.pid)
            count_objects(http)
            logged = lambda: WORKER_TASK_LINE.findall(keyed.log())  # noqa: E731
            assert poll_until(lambda: str(replacement.pid) in logged(), 10), keyed.log()[-3000:]
        finally:
            http.put("/admin/log-level", json={"level": "info"})


def test_tasks_shows_each_queued_request_and_each_running_task(keyed, gate):
    def predict(instances: list[int]) -> httpx.Response:
        return httpx.post(f"{keyed.url}/v1/models/waits-at-the-gate:predict", json={"instances": instances},
                          headers=AUTH, timeout=60)

    def stages(http: httpx.Client) -> list[str]:
        return [task["stage"] for task in http.get("/admin/tasks").json()["tasks"]]

    with httpx.Client(base_url=keyed.url, headers=AUTH, timeout=60) as http, ThreadPoolExecutor(2) as calls:
        assert http.get("/admin/tasks").json() == {"tasks": []}
        first = calls.submit(predict, [1, 2])
        assert poll_until(lambda: stages(http) == ["running"], 30)
        second = calls.submit(predict, [3])
        assert poll_until(lambda: stages(http) == ["running", "queued"], 30)
        running, queued = http.get("/admin/tasks").json()["tasks"]
        [worker] = inference_workers(keyed.process.pid)
        assert running == {"model": "waits-at-the-gate", "stage": "running", "age_s": running["age_s"],
                           "requests": 1, "worker_pid": worker.pid}
        assert queued == {"model": "waits-at-the-gate", "stage": "queued", "age_s": queued["age_s"],
                          "requests": None, "worker_pid": None}
        assert running["age_s"] >= queued["age_s"] >= 0
        assert poll_until(lambda: open_the_gate(gate), 30)
        assert first.result(30).json() == {"predictions": [1, 2]}
        assert poll_until(lambda: open_the_gate(gate), 30)
        assert second.result(30).json() == {"predictions": [3]}
        assert http.get("/admin/tasks").json() == {"tasks": []}


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/admin/log-level", None), ("PUT", "/admin/log-level", {"level": "info"}), ("GET", "/admin/tasks", None),
])
def test_with_api_keys_set_admin_needs_one(keyed, method, path, body):
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        refused = http.request(method, path, json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert http.request(method, path, json=body, headers=AUTH).status_code == 200
