"""Load as users make it: plain keep-alive clients, yosoclient, and open-loop Poisson arrivals.

- `closed_loop(..., client="plain")`: N clients, each on one keep-alive http.client connection, sending the
  next image as soon as an answer arrives, with no retry logic: a 503 is followed at once by the next
  request. This is what curl loops, locust, hey, k6 and most HTTP libraries do, and the main figure.
- `closed_loop(..., client="yosoclient")`: N `yosoclient.Client`s, which wait what Retry-After asks (with
  jitter) before retrying a 503 up to 3 times: the polite second row.
- `open_loop(rate)`: requests arrive at random (Poisson) times at `rate` per second, whatever the answers,
  each on its own connection, as independent users behind a load balancer arrive.

Clients run in processes of their own (`python -m bench.load`), a few threads each at most, so that
their latencies are the server's rather than one interpreter lock's. The parent starts them, then gives one
start signal, so every client measures the same window.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.cores import CoreUse, CoresMeter
from tests.support import multipart

MAX_CLIENT_PROCESSES = {"plain": 32, "yosoclient": 8}  # yosoclient loads OpenCV: fewer, busier processes
OPEN_LOOP_PROCESSES = 2
OPEN_LOOP_THREADS = 128  # per process: requests in flight at once, far above what the server admits
TIMEOUT_S = 60.0


@dataclass
class LoadResult:
    seconds: float
    cores: CoreUse = field(default_factory=CoreUse.unknown)  # where the cores went in the window (server known)
    ok_latencies_s: list[float] = field(default_factory=list)
    refused_latencies_s: list[float] = field(default_factory=list)  # 503
    error_statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer (connection failed, timeout)

    @property
    def errors(self) -> int:
        return sum(self.error_statuses.values())

    @property
    def answered(self) -> int:
        return len(self.ok_latencies_s) + len(self.refused_latencies_s) + self.errors

    @property
    def images_per_s(self) -> float:
        return len(self.ok_latencies_s) / self.seconds

    @property
    def refused(self) -> int:
        return len(self.refused_latencies_s)

    @property
    def refused_share(self) -> float:
        return self.refused / self.answered if self.answered else 0.0

    def ok_ms(self, quantile: float) -> float:
        return _quantile(self.ok_latencies_s, quantile) * 1000

    def refused_ms(self, quantile: float) -> float:
        return _quantile(self.refused_latencies_s, quantile) * 1000

    def add(self, figures: dict) -> None:
        self.ok_latencies_s += figures["ok"]
        self.refused_latencies_s += figures["refused"]
        self.error_statuses.update({int(status): n for status, n in figures["errors"].items()})

    @classmethod
    def merged(cls, results: list[LoadResult]) -> LoadResult:
        """Several measurements of the same phase, as one."""
        whole = cls(sum(r.seconds for r in results))
        for result in results:
            whole.add({"ok": result.ok_latencies_s, "refused": result.refused_latencies_s,
                       "errors": result.error_statuses})
        return whole


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, round(q * 100) - 1))]


def closed_loop(host: str, port: int, path: str, images: list[Path], concurrency: int, seconds: float,
                client: str = "plain", warmup_s: float = 2.0, server_pid: int | None = None,
                alongside: Callable[[], object] | None = None) -> LoadResult:
    """`concurrency` clients, each sending its next request when the last is answered; `warmup_s` unmeasured.
    With `server_pid`, the result also says where the cores went in the measured window. Without it, `alongside()` is
    called in this thread when the measured window opens (and should end within it)."""
    processes = min(concurrency, MAX_CLIENT_PROCESSES[client])
    threads = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    job = {"kind": client, "host": host, "port": port, "path": path, "images": [str(image) for image in images]}
    return _run([job | {"threads": n, "first": sum(threads[:i])} for i, n in enumerate(threads)], seconds, warmup_s,
                server_pid, alongside)


def open_loop(host: str, port: int, path: str, images: list[Path], rate: float, seconds: float,
              warmup_s: float = 3.0, server_pid: int | None = None,
              alongside: Callable[[], object] | None = None) -> LoadResult:
    """Poisson arrivals at `rate` per second for `warmup_s` unmeasured, then `seconds`; every request is
    answered before this returns. A request counts in the window it was sent in. `server_pid` and `alongside`:
    as closed_loop."""
    job = {"kind": "poisson", "host": host, "port": port, "path": path, "images": [str(image) for image in images],
           "rate": rate / OPEN_LOOP_PROCESSES, "threads": OPEN_LOOP_THREADS}
    return _run([job | {"first": i} for i in range(OPEN_LOOP_PROCESSES)], seconds, warmup_s, server_pid, alongside)


def _run(jobs: list[dict], seconds: float, warmup_s: float, server_pid: int | None,
         alongside: Callable[[], object] | None = None) -> LoadResult:
    processes = [subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for _ in jobs]
    try:
        for process, job in zip(processes, jobs):
            process.stdin.write(json.dumps(job) + "\n")
            process.stdin.flush()
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a load client failed to start")
        measure_from = time.monotonic() + warmup_s  # CLOCK_MONOTONIC: one clock for every process
        window = json.dumps({"measure_from": measure_from, "stop_at": measure_from + seconds})
        for process in processes:
            process.stdin.write(window + "\n")
            process.stdin.flush()
        result = LoadResult(seconds)
        if server_pid is not None:
            result.cores = _cores_in_window(server_pid, processes, measure_from, seconds)
        elif alongside is not None:
            time.sleep(max(0.0, measure_from - time.monotonic()))
            alongside()
        for process in processes:
            result.add(json.loads(process.stdout.readline()))
    finally:
        for process in processes:
            _reap(process)
    return result


def _cores_in_window(server_pid: int, clients: list[subprocess.Popen], measure_from: float,
                     seconds: float) -> CoreUse:
    meter = CoresMeter(server_pid, [client.pid for client in clients])
    time.sleep(max(0.0, measure_from - time.monotonic()))
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def _reap(process: subprocess.Popen) -> None:
    process.stdin.close()  # a client still waiting for its window reads EOF and exits
    try:
        process.wait(timeout=TIMEOUT_S + 10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Figures:
    """Latencies by outcome, from any number of threads."""

    def __init__(self) -> None:
        self.ok: list[float] = []
        self.refused: list[float] = []
        self.errors: Counter[int] = Counter()
        self._lock = threading.Lock()

    def record(self, status: int, elapsed: float) -> None:
        with self._lock:
            if status == 200:
                self.ok.append(elapsed)
            elif status == 503:
                self.refused.append(elapsed)
            else:
                self.errors[status] += 1

    def as_json(self) -> str:
        return json.dumps({"ok": self.ok, "refused": self.refused, "errors": self.errors})


def _post(connection: http.client.HTTPConnection, path: str, body: bytes, content_type: str) -> int:
    """One request on `connection`; the status, or 0 (and the connection closed) when no answer came."""
    try:
        connection.request("POST", path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        connection.close()  # the next request opens a new connection
        return 0


def _plain_client(job: dict, bodies: list, index: int, measure_from: float, stop_at: float, out: _Figures) -> None:
    """One keep-alive connection, the next request as soon as the last is answered, no retry.

    A request counts when its answer arrives inside the window, wherever it started: images per second are
    then answers per second.
    """
    connection = http.client.HTTPConnection(job["host"], job["port"], timeout=TIMEOUT_S)
    i = index
    while (sent := time.monotonic()) < stop_at:
        body, content_type = bodies[i % len(bodies)]
        i += 1
        status = _post(connection, job["path"], body, content_type)
        if measure_from <= (answered := time.monotonic()) <= stop_at:
            out.record(status, answered - sent)
    connection.close()


def _yosoclient_client(job: dict, images: list[bytes], index: int, measure_from: float, stop_at: float,
                       out: _Figures) -> None:
    """yosoclient as an application uses it: one Client, 503s retried after Retry-After with jitter."""
    from yosoclient.client import Client, YosoError  # imported before "ready" (_client_main): OpenCV is slow to load

    with Client(f"http://{job['host']}:{job['port']}", timeout=TIMEOUT_S) as client:
        i = index
        while (sent := time.monotonic()) < stop_at:
            try:
                client.count_objects(images[i % len(images)])
                status = 200
            except YosoError as error:
                status = error.status or 0
            i += 1
            if measure_from <= (answered := time.monotonic()) <= stop_at:
                out.record(status, answered - sent)


def _poisson_arrivals(job: dict, bodies: list, index: int, measure_from: float, stop_at: float,
                      out: _Figures) -> None:
    """Requests at exponentially distributed intervals, each on a new connection, until `stop_at`; the
    requests sent inside the window are counted once all are answered."""
    arrivals = random.Random(index)

    def one(body: bytes, content_type: str, sent: float) -> None:
        connection = http.client.HTTPConnection(job["host"], job["port"], timeout=TIMEOUT_S)
        status = _post(connection, job["path"], body, content_type)
        connection.close()
        if sent >= measure_from:
            out.record(status, time.monotonic() - sent)

    with ThreadPoolExecutor(max_workers=job["threads"]) as pool:
        at, i = time.monotonic(), index
        while True:
            at += arrivals.expovariate(job["rate"])
            if at >= stop_at:
                break
            time.sleep(max(0.0, at - time.monotonic()))
            body, content_type = bodies[i % len(bodies)]
            i += 1
            pool.submit(one, body, content_type, at)


def _client_main() -> None:
    """`python -m bench.load`: the job on stdin, "ready", the window on stdin, figures on stdout."""
    job = json.loads(sys.stdin.readline())
    if job["kind"] == "yosoclient":
        import yosoclient.client  # noqa: F401 - loaded now, not inside the measured window
    images = [Path(image).read_bytes() for image in job["images"]]
    bodies = [multipart(image) for image in images]
    print("ready", flush=True)
    window = json.loads(sys.stdin.readline())
    out = _Figures()
    kind, first = job["kind"], job["first"]
    if kind == "poisson":
        _poisson_arrivals(job, bodies, first, window["measure_from"], window["stop_at"], out)
    else:
        target, data = (_plain_client, bodies) if kind == "plain" else (_yosoclient_client, images)
        threads = [threading.Thread(target=target, args=(job, data, first + n, window["measure_from"],
                                                         window["stop_at"], out)) for n in range(job["threads"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    print(out.as_json(), flush=True)


if __name__ == "__main__":
    _client_main()
