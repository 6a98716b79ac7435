"""A closed-loop HTTP load generator: N clients on keep-alive connections posting sample images.

Clients behave as yosoclient does: a 503 is retried after its Retry-After. The generator is plain
http.client in threads, so it costs the machine far less than the server it measures.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field


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


def run_load(host: str, port: int, path: str, images: list[bytes], concurrency: int, seconds: float,
             warmup_s: float = 2.0) -> LoadResult:
    bodies = [multipart(image) for image in images]
    result = LoadResult(concurrency, seconds)
    lock = threading.Lock()
    measure_from = time.perf_counter() + warmup_s
    stop_at = measure_from + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        i = index
        while (now := time.perf_counter()) < stop_at:
            body, content_type = bodies[i % len(bodies)]
            i += 1
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                status, retry_after = response.status, response.getheader("Retry-After")
            except (OSError, http.client.HTTPException):
                connection.close()
                status, retry_after = 0, None
            elapsed = time.perf_counter() - now
            if now >= measure_from and now + elapsed <= stop_at:
                with lock:
                    if status == 200:
                        result.ok_latencies_s.append(elapsed)
                    elif status == 503:
                        result.shed_latencies_s.append(elapsed)
                    else:
                        result.error_statuses[status] += 1
            if status == 503 and retry_after:
                time.sleep(min(float(retry_after), max(0.0, stop_at - time.perf_counter())))
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result
