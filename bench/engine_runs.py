"""One engine's figures over processes: its raw limit (bench.raw), each stage of a request in-process
(bench.stages) and a live server running it (YOSO_ENGINE, YOSO_INFERENCE_PRECISION), measured back to back so
that their ratios are of one moment of the host.

The raw limit is decode + detect in-process with the best layout of the cores (one net on all of them, or one
single-threaded net per core), measured before the server and again, in that layout, after it: the limit is
the mean of the two, as bench/__main__.py brackets its phases. The server answers a lone plain client (its p50
is a request's latency when nothing else runs), then 4 plain keep-alive clients per worker (goodput). Each
worker's resident memory is read with psutil once the server is ready (its workers loaded and warmed up) and
again after the load. The stages are measured just before the server starts, so that the lone request's p50
less their sum, the HTTP front, compares figures of the same minute. Every figure carries what the host's
hypervisor (bench.host) and the machine's other processes (bench.others) took meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.host import StealMeter
from bench.load import closed_loop
from bench.others import OthersMeter
from bench.raw import RawNets, RawResult, best, every_layout
from bench.stages import stages_in_own_process
from tests.live_server import LiveServer
from yoso.model.store import ModelFiles

ENDPOINT = "/count_objects"
CLIENTS_PER_WORKER = 4
LOAD_WARMUP_S = 2.0  # unmeasured seconds before each load phase, at most


@dataclass(frozen=True)
class EngineRun:
    layouts: list[RawResult]  # before the server
    closing_raw: RawResult  # the best layout again, after it
    stages_ms: dict[str, float]  # median ms of each stage of one request, in-process, on all the cores
    lone_p50_ms: float
    goodput_images_per_s: float  # at CLIENTS_PER_WORKER x workers plain clients
    refused: int  # 503 answers to those clients
    errors: int
    worker_rss_ready_mb: list[float]
    worker_rss_served_mb: list[float]
    host_steal: float  # the share of the CPU the host's hypervisor gave to others meanwhile
    others_share: float  # the share the machine's other processes used meanwhile

    @property
    def raw_limit(self) -> float:
        return (best(self.layouts).images_per_s + self.closing_raw.images_per_s) / 2


def worker_rss_mb(server_pid: int) -> list[float]:
    """The resident memory of each inference worker of a server: its children started by multiprocessing's
    spawn (not the resource tracker, which holds no model)."""
    sizes = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                sizes.append(child.memory_info().rss / 1e6)
        except psutil.NoSuchProcess:  # a worker being replaced
            continue
    return sizes


def served_engine(live: LiveServer, model: str) -> str | None:
    """What the server says runs `model` ("openvino bf16"), where GET /models says it (else None)."""
    answer = httpx.get(f"{live.url}/models", timeout=10)
    if answer.status_code != 200:
        return None
    entries = answer.json()
    entries = entries.get("models", entries) if isinstance(entries, dict) else entries
    entry = next((item for item in entries if isinstance(item, dict) and item.get("name") == model), {})
    return " ".join(str(entry[key]) for key in ("engine", "precision") if entry.get(key)) or None


def run_engine(model: str, files: ModelFiles, engine: str, precision: str, images: list[Path], workers: int,
               cores: int, seconds: float, stage_passes: int, log: Path) -> EngineRun:
    """The raw limit, the stages, the server under a lone client then 4 x workers clients, the raw limit again."""
    image_bytes = [path.read_bytes() for path in images]
    choice = dict(engine=engine, precision=precision)
    with StealMeter() as steal, OthersMeter() as others:
        layouts = every_layout(model, files, image_bytes, cores, seconds, **choice)
        stages_ms = stages_in_own_process(model, files, engine, precision, image_bytes, cores, stage_passes)
        env = {"YOSO_PRELOAD_MODELS": model, "YOSO_DEFAULT_MODEL": model, "YOSO_WORKERS": str(workers),
               "YOSO_LOG_LEVEL": "warning", "YOSO_ENGINE": engine, "YOSO_INFERENCE_PRECISION": precision}
        live = LiveServer(env=env).start(log)
        try:
            said = served_engine(live, model)
            if said is not None and said != f"{engine} {precision}":
                raise RuntimeError(f"asked the server for {engine} {precision}, it runs {model} on {said}")
            rss_ready = worker_rss_mb(live.process.pid)
            warmup_s = min(LOAD_WARMUP_S, seconds)
            lone = closed_loop("127.0.0.1", live.port, ENDPOINT, images, 1, seconds, warmup_s=warmup_s)
            busy = closed_loop("127.0.0.1", live.port, ENDPOINT, images, CLIENTS_PER_WORKER * workers, seconds,
                               warmup_s=warmup_s)
            rss_served = worker_rss_mb(live.process.pid)
        finally:
            live.stop()
        with RawNets(model, files, image_bytes, best(layouts).processes, best(layouts).threads, **choice) as nets:
            closing = nets.run(seconds)
    return EngineRun(layouts, closing, stages_ms, lone.ok_ms(0.5), busy.images_per_s, busy.refused + lone.refused,
                     busy.errors + lone.errors, rss_ready, rss_served, steal.share, others.share)

