"""Overload protection, timeouts, abandoned requests and graceful shutdown, on real server processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import time

import httpx
import pytest

from tests.support import EXPECTED_COUNTS, LiveServer, eventually, image_bytes, inference_workers, scrape, value

IMAGE = "dog_person_horse.jpg"
EXPECTED = {"items": EXPECTED_COUNTS["yolov3-tiny"][IMAGE]}


@pytest.fixture()
def start(model_store, tmp_path):
    servers: list[LiveServer] = []

    def _start(**env: str) -> LiveServer:
        live = LiveServer(env={"YOSO_PRELOAD_MODELS": "yolov3-tiny", **env})
        servers.append(live.start(tmp_path / f"server{len(servers)}.log"))
        return live

    yield _start
    for live in servers:
        live.stop(signal.SIGKILL)


async def burst(url: str, count: int, path: str = "/count_objects") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=count)) as http:
        return await asyncio.gather(*(http.post(path, files={"file": (IMAGE, image_bytes(IMAGE))})
                                      for _ in range(count)))


def test_past_capacity_requests_are_shed_at_once_with_503_and_retry_after(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="1", YOSO_MAX_QUEUE_WAIT_MS="60000")
    responses = asyncio.run(burst(live.url, 12))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    for response in responses:
        if response.status_code == 200:
            assert response.json() == EXPECTED
        else:
            assert response.headers["retry-after"] == "1"
            assert "capacity" in response.json()["detail"]
    assert statuses.count(200) >= 2  # the running request and the queued one


def test_with_no_queue_only_the_running_request_is_admitted(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="0")
    statuses = [r.status_code for r in asyncio.run(burst(live.url, 6))]
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    # once the burst is over, the server serves again
    assert httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))}).json() == EXPECTED


def test_a_request_queues_only_behind_a_task_expected_to_end_soon(start):
    """With room in the queue for four, a burst that reaches a worker at the start of its task is still shed:
    the default wait bound lets a request queue only behind a task past half its expected time."""
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="4")
    assert [r.status_code for r in asyncio.run(burst(live.url, 1))] == [200]  # how long a task takes is now known
    statuses = [r.status_code for r in asyncio.run(burst(live.url, 6))]
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) < 5, statuses  # the running request and four queued would be the count bound's


def test_a_request_over_the_time_limit_gets_504(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="64", YOSO_MAX_QUEUE_WAIT_MS="60000", YOSO_REQUEST_TIMEOUT_S="0.2")
    responses = asyncio.run(burst(live.url, 12))  # one worker needs well over 0.2 s for twelve images
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 504}, statuses
    late = next(r for r in responses if r.status_code == 504)
    assert "longer than 0.2 s" in late.json()["detail"]


def test_slow_uploads_hold_upload_places_not_inference_capacity(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="0", YOSO_MAX_UPLOADS="3")
    head = ("POST /count_objects HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n").encode()
    tricklers = [socket.create_connection(("127.0.0.1", live.port)) for _ in range(3)]
    try:
        for trickler in tricklers:
            trickler.sendall(head)  # and then nothing more: three uploads that never finish
        time.sleep(0.2)
        served = httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})
        assert served.status_code == 503 and "capacity" in served.json()["detail"]  # upload places all taken
        tricklers.pop().close()
        time.sleep(0.2)
        served = httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})
        assert served.json() == EXPECTED  # the one worker was never held by the tricklers
    finally:
        for trickler in tricklers:
            trickler.close()


def test_a_request_whose_client_left_is_dropped_before_inference(start):
    """The leaver asks for the other model, so that /metrics shows when it is queued behind the burst."""
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="64", YOSO_MAX_QUEUE_WAIT_MS="60000",
                 YOSO_PRELOAD_MODELS="yolov3-tiny,yolov4-tiny")
    leaver = "yolov4-tiny"
    request = httpx.Request("POST", live.url + f"/count_objects?model={leaver}",
                            files={"file": (IMAGE, image_bytes(IMAGE))})
    payload = b"".join(request.stream)
    head = f"POST /count_objects?model={leaver} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n"
    head += f"Content-Type: {request.headers['content-type']}\r\n\r\n"
    metrics = httpx.Client(base_url=live.url, timeout=10)

    def waiting(model: str) -> float:
        return value(scrape(metrics), "yoso_requests_waiting", model=model)

    async def scenario() -> list[httpx.Response]:
        busy = asyncio.ensure_future(burst(live.url, 24))  # keeps the only worker busy for a while
        assert await asyncio.to_thread(eventually, lambda: waiting("yolov3-tiny") > 1), "the burst never queued"
        with socket.create_connection(("127.0.0.1", live.port)) as connection:
            connection.sendall(head.encode() + payload)
            queued = await asyncio.to_thread(eventually, lambda: waiting(leaver) == 1)
            assert queued, "the leaver's request never waited behind the burst"
        return await busy

    with metrics:
        assert all(r.json() == EXPECTED for r in asyncio.run(scenario()))
        assert eventually(lambda: value(scrape(metrics), "yoso_requests_abandoned_total") == 1)
        samples = scrape(metrics)
    assert value(samples, "yoso_requests_waiting", model=leaver) == 0
    assert value(samples, "yoso_images_processed_total", model=leaver, endpoint="/count_objects") == 0


def test_sigterm_drains_every_accepted_request_then_exits_0(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="64", YOSO_MAX_QUEUE_WAIT_MS="60000")

    async def scenario() -> tuple[list[httpx.Response], bool]:
        inflight = asyncio.ensure_future(burst(live.url, 10))
        await asyncio.sleep(0.2)  # all 10 sent and accepted; one worker needs ~0.4 s or more for them
        live.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        try:
            httpx.get(live.url + "/healthz", timeout=2)
            refused = False
        except httpx.TransportError:
            refused = True
        return await inflight, refused

    responses, new_connection_refused = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 10
    assert all(r.json() == EXPECTED for r in responses)
    assert new_connection_refused
    assert live.process.wait(30) == 0
    assert "SIGTERM: draining" in live.log()


def test_readyz_is_503_until_the_models_are_warm(model_store, tmp_path):
    live = LiveServer(env={"YOSO_PRELOAD_MODELS": "yolov3-tiny,yolov4-tiny"})
    live.start(tmp_path / "server.log", wait_ready=False)
    try:
        live.wait_until("/healthz", 60)
        early = httpx.get(live.url + "/readyz")
        inference = httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})
        live.wait_until("/readyz", 120)
    finally:
        live.stop()
    assert early.status_code == 503 and early.json() == {"status": "starting"}
    assert inference.status_code in (200, 503)  # 503 while loading, with a hint to retry
    if inference.status_code == 503:
        assert inference.headers["retry-after"] == "1" and "loading" in inference.json()["detail"]


def test_a_worker_that_dies_mid_request_is_answered_and_replaced(start):
    live = start(YOSO_WORKERS="1", YOSO_MAX_QUEUE="64", YOSO_MAX_QUEUE_WAIT_MS="60000")
    [worker] = inference_workers(live.process.pid)

    async def scenario() -> list[httpx.Response]:
        inflight = asyncio.ensure_future(burst(live.url, 4))
        await asyncio.sleep(0.1)
        worker.kill()
        return await inflight

    responses = asyncio.run(scenario())
    assert len(responses) == 4
    for response in responses:
        assert response.status_code in (200, 500), response.text
        if response.status_code == 500:
            assert "worker died" in response.json()["detail"]
    assert 500 in [r.status_code for r in responses]
    assert [p.pid for p in inference_workers(live.process.pid)] != [worker.pid]
    assert httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))}).json() == EXPECTED


def test_workers_compute_at_idle_priority_so_the_server_process_always_runs_first(server):
    workers = inference_workers(server.process.pid)
    assert len(workers) == 2
    assert os.sched_getscheduler(server.process.pid) == os.SCHED_OTHER
    assert all(os.sched_getscheduler(worker.pid) == os.SCHED_IDLE for worker in workers)


def test_on_a_shared_host_workers_can_run_at_normal_priority(start):
    live = start(YOSO_WORKERS="1", YOSO_WORKER_PRIORITY="normal")
    [worker] = inference_workers(live.process.pid)
    assert os.sched_getscheduler(worker.pid) == os.SCHED_OTHER and worker.nice() == 0
    assert httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))}).json() == EXPECTED


def test_replacements_that_cannot_start_back_off_and_the_server_is_not_ready_meanwhile(model_store, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(model_store.model_dir / "yolov3-tiny", models / "yolov3-tiny")
    weights = models / "yolov3-tiny" / "yolov3-tiny.weights"
    live = LiveServer(env={"YOSO_MODEL_DIR": str(models), "HOME": str(tmp_path), "YOSO_WORKERS": "1",
                           "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_DEFAULT_MODEL": "yolov3-tiny"})
    live.start(tmp_path / "server.log")
    try:
        genuine = weights.read_bytes()
        weights.write_bytes(genuine[:1000])  # the files go bad under a running server
        [worker] = inference_workers(live.process.pid)
        worker.kill()
        deadline = time.monotonic() + 20
        while "starting a replacement in 1 s" not in live.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "a replacement worker failed to start" in live.log()
        assert "starting a replacement in 0.5 s" in live.log() and "starting a replacement in 1 s" in live.log()
        assert httpx.get(live.url + "/readyz").status_code == 503
        refused = httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        weights.write_bytes(genuine)  # repaired: the next attempt succeeds
        live.wait_until("/readyz", 60)
        served = httpx.post(live.url + "/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})
        assert served.json() == EXPECTED
    finally:
        live.stop()
