"""A closed-loop HTTP load generator: N clients on keep-alive connections posting sample images.

Each client is its own process (`python -m yoso.bench.load`) running plain http.client, as N independent
users are: no client waits for another's turn at an interpreter lock, so the latencies measured are the
server's. Clients behave as yosoclient does: a 503 is retried after its Retry-After plus up to half again
at random. The parent starts them all, then gives one start signal, so every client measures the same window.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RETRY_JITTER = 0.5  # yosoclient's: clients refused together do not all return together


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    ok_latencies_s: list[float] = field(default_factory=list)
    shed_latencies_s: list[float] = field(default_factory=list)
    error_statuses: Counter[int] = field(default_factory=Counter)  # 0: the connection failed

    @property
    def errors(self) -> int:
        return sum(self.error_statuses.values())

    @property
    def images_per_s(self) -> float:
        return len(self.ok_latencies_s) / self.seconds

    @property
    def shed_share(self) -> float:
        total = len(self.ok_latencies_s) + len(self.shed_latencies_s) + self.errors
        return len(self.shed_latencies_s) / total if total else 0.0

    @classmethod
    def merged(cls, results: list[LoadResult]) -> LoadResult:
        """Several measurements of the same phase, as one."""
        whole = cls(results[0].concurrency, sum(r.seconds for r in results))
        for result in results:
            whole.ok_latencies_s += result.ok_latencies_s
            whole.shed_latencies_s += result.shed_latencies_s
            whole.error_statuses.update(result.error_statuses)
        return whole

    def ok_ms(self, quantile: float) -> float:
        return _quantile(self.ok_latencies_s, quantile) * 1000

    def shed_ms(self, quantile: float) -> float:
        return _quantile(self.shed_latencies_s, quantile) * 1000


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q * 100) - 1))]


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def run_load(host: str, port: int, path: str, images: list[Path], concurrency: int, seconds: float,
             warmup_s: float = 2.0) -> LoadResult:
    """`concurrency` client processes posting `images` in turn for `warmup_s` unmeasured, then `seconds`."""
    job = json.dumps({"host": host, "port": port, "path": path, "images": [str(image) for image in images]})
    clients = [subprocess.Popen([sys.executable, "-m", __name__, str(index)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for index in range(concurrency)]
    try:
        for client in clients:
            client.stdin.write(job + "\n")
            client.stdin.flush()
        for client in clients:
            if client.stdout.readline().strip() != "ready":
                raise RuntimeError("a load client failed to start")
        measure_from = time.monotonic() + warmup_s  # CLOCK_MONOTONIC: one clock for every process
        window = json.dumps({"measure_from": measure_from, "stop_at": measure_from + seconds})
        for client in clients:
            client.stdin.write(window + "\n")
            client.stdin.flush()
        result = LoadResult(concurrency, seconds)
        for client in clients:
            figures = json.loads(client.stdout.readline())
            result.ok_latencies_s += figures["ok"]
            result.shed_latencies_s += figures["shed"]
            result.error_statuses.update({int(status): n for status, n in figures["errors"].items()})
    finally:
        for client in clients:
            _reap(client)
    return result


def _reap(client: subprocess.Popen) -> None:
    client.stdin.close()  # a client still waiting for its window reads EOF and exits
    try:
        client.wait(timeout=10)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait()


def _client(job: dict, bodies: list[tuple[bytes, str]], index: int, measure_from: float, stop_at: float) -> dict:
    """One keep-alive connection posting images until `stop_at`; latencies of the requests answered in the window.

    A request counts when its answer arrives inside the window, wherever it started: images per second are
    then answers per second. (Counting only requests that also started inside the window would miss the ones
    in flight when it opens, about 1% of a 10-second window at full load.)
    """
    connection = http.client.HTTPConnection(job["host"], job["port"], timeout=60)
    ok, shed, errors = [], [], Counter()
    i = index
    while (now := time.monotonic()) < stop_at:
        body, content_type = bodies[i % len(bodies)]
        i += 1
        try:
            connection.request("POST", job["path"], body, {"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            status, retry_after = response.status, response.getheader("Retry-After")
        except (OSError, http.client.HTTPException):
            connection.close()
            status, retry_after = 0, None
        elapsed = time.monotonic() - now
        if measure_from <= now + elapsed <= stop_at:
            if status == 200:
                ok.append(elapsed)
            elif status == 503:
                shed.append(elapsed)
            else:
                errors[status] += 1
        if status == 503 and retry_after:
            wait_s = float(retry_after) * (1 + random.random() * RETRY_JITTER)
            time.sleep(min(wait_s, max(0.0, stop_at - time.monotonic())))
    connection.close()
    return {"ok": ok, "shed": shed, "errors": errors}


def _client_main() -> None:
    """`python -m yoso.bench.load INDEX`: the job on stdin, "ready", the window on stdin, figures on stdout."""
    job = json.loads(sys.stdin.readline())
    bodies = [multipart(Path(image).read_bytes()) for image in job["images"]]
    print("ready", flush=True)
    window = json.loads(sys.stdin.readline())
    figures = _client(job, bodies, int(sys.argv[1]), window["measure_from"], window["stop_at"])
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    _client_main()
