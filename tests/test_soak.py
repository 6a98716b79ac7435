"""Soak: thousands of requests over every endpoint, good and bad, four at a time, against a dedicated server.

After a warm-up that has touched every code path (both models in every worker, drawing, each error), the
resident memory of the server and all its processes (inference workers, multiprocessing's helpers) must
stay flat, their open file descriptors must not grow, and no worker may have been replaced.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice

import httpx
import psutil
import pytest

from tests.conftest import TINY_MODELS
from tests.support import LiveServer, eventually, image_bytes, serving

CONCURRENCY = 4
WARM_UP_REQUESTS = 300
SOAK_REQUESTS = 2500
MAX_MEMORY_GROWTH = 0.10
MAX_NEW_DESCRIPTORS = 4  # sockets the server may hold a moment longer; a leak grows with the requests

IMAGE_FOR_MODEL = dict(zip(TINY_MODELS, ("car1.jpg", "car3.jpg")))  # the smallest samples
JPEG = image_bytes("car1.jpg")


def _upload(data: bytes) -> dict:
    return {"file": ("image.jpg", data, "image/jpeg")}


# (method, path, params, body, expected status): every endpoint, both models, and the common refusals.
MIX = [
    *[("POST", endpoint, {"model": model}, image_bytes(image), 200)
      for endpoint in ("/predict", "/count_objects", "/detect") for model, image in IMAGE_FOR_MODEL.items()],
    ("GET", "/models", None, None, 200),
    ("GET", "/healthz", None, None, 200),
    ("GET", "/readyz", None, None, 200),
    ("GET", "/metrics", None, None, 200),
    ("GET", "/docs", None, None, 200),
    ("POST", "/detect", {"model": "yolov9"}, JPEG, 404),
    ("POST", "/count_objects", {"confidence": "2"}, JPEG, 422),
    ("POST", "/predict", None, b"not an image", 415),
    ("POST", "/detect", None, JPEG[: len(JPEG) // 2], 422),
]


def send(client: httpx.Client, request: tuple) -> tuple[str, int, int]:
    method, path, params, body, expected = request
    files = _upload(body) if body is not None else None
    response = client.request(method, path, params=params, files=files)
    return path, expected, response.status_code


def run(server: LiveServer, count: int) -> Counter:
    """`count` requests of the mix, CONCURRENCY at a time; returns (path, expected, got) counts."""
    clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(CONCURRENCY)]
    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            jobs = [pool.submit(send, clients[i % CONCURRENCY], request)
                    for i, request in enumerate(islice(cycle(MIX), count))]
            return Counter(job.result() for job in jobs)
    finally:
        for client in clients:
            client.close()


def processes(server: LiveServer) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def connections_closed(server: LiveServer) -> bool:
    """The server holds no TCP connection but its listening socket: it has closed those its clients closed."""
    return all(c.status == psutil.CONN_LISTEN for p in processes(server) for c in p.net_connections("tcp"))


def footprint(server: LiveServer) -> tuple[int, int, set[int]]:
    """Resident bytes and open descriptors of the server and all its processes, and their pids."""
    assert eventually(lambda: connections_closed(server), timeout_s=30), [
        c for p in processes(server) for c in p.net_connections("tcp")]
    members = processes(server)
    return sum(p.memory_info().rss for p in members), sum(p.num_fds() for p in members), {p.pid for p in members}


@pytest.fixture(scope="module")
def soak_server(model_store, tmp_path_factory):
    # a queue deep enough for the soak's concurrency: this test is about leaks, not shedding
    env = {"YOSO_WORKERS": "2", "YOSO_PRELOAD_MODELS": ",".join(TINY_MODELS), "YOSO_MAX_QUEUE": "16",
           "YOSO_MAX_QUEUE_WAIT_MS": "60000"}
    yield from serving(env, tmp_path_factory.mktemp("soak"))


def test_thousands_of_requests_leave_memory_descriptors_and_workers_as_they_were(soak_server):
    warm_up = run(soak_server, WARM_UP_REQUESTS)
    memory_before, descriptors_before, pids_before = footprint(soak_server)
    assert len(pids_before) >= 3  # the server and its two inference workers, at least

    started = time.monotonic()
    soak = run(soak_server, SOAK_REQUESTS)
    elapsed = time.monotonic() - started
    memory_after, descriptors_after, pids_after = footprint(soak_server)

    unexpected = {key: n for key, n in (warm_up + soak).items() if key[1] != key[2]}
    assert not unexpected, unexpected
    assert sum(soak.values()) == SOAK_REQUESTS
    growth = (memory_after - memory_before) / memory_before
    report = (f"{SOAK_REQUESTS} requests in {elapsed:.0f} s; RSS {memory_before / 2**20:.0f} -> "
              f"{memory_after / 2**20:.0f} MiB ({growth:+.1%}); descriptors {descriptors_before} -> {descriptors_after}")
    print(report)
    assert growth < MAX_MEMORY_GROWTH, report
    assert descriptors_after <= descriptors_before + MAX_NEW_DESCRIPTORS, report
    assert pids_after == pids_before, "a process was replaced or added during the soak"
