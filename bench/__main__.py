"""`python -m bench`: the raw model's limit, then the server under the load users make, in one run.

Each round measures the server with plain keep-alive clients (1, 4, 8, 32 and a retry storm of 128),
yosoclient's polite retries (32, 128), and open-loop Poisson arrivals at 0.5, 0.8, 1 and 2 x the raw limit,
and runs the raw model (decode + detect, no HTTP, kept loaded in processes of its own: bench.raw.RawNets)
after every phase. The host's speed drifts by a tenth and more within a minute, so each server figure is
compared with the raw runs just before and after it, and the open loop's rate is a multiple of the raw run
just before it; ratios are the medians of the rounds, latencies pool them. Every figure also carries the
share of CPU time the host's hypervisor gave to other guests meanwhile (steal): one way the host slows a run,
and the one it admits (shared caches and the other thread of each core do not show), and where the cores went
in its window: the workers, the server process in front of them, the clients, other processes, idle
(bench.cores).
Prints the table and the targets, writes the figures as JSON, and with --markdown the table as
docs/benchmark.md shows it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import click
import cv2

from bench.cores import CoreUse
from bench.host import StealMeter
from tests.live_server import LiveServer
from bench.load import LoadResult, closed_loop, open_loop
from bench.options import images_option, model_option, rounds_option
from bench.raw import RawNets, best, every_layout, installed_files, single_image_latency_ms
from bench.report import Target, markdown_targets, percent, standard_json, worst
from yoso.config import load_settings

ENDPOINT = "/count_objects"
PLAIN_CLIENTS = (1, 4, 8, 32, 128)
POLITE_CLIENTS = (32, 128)
OPEN_LOOP_LOADS = (0.5, 0.8, 1.0, 2.0)  # x the raw limit


@dataclass(frozen=True)
class Phase:
    label: str
    client: str  # plain, yosoclient or poisson
    load: float  # clients, or arrivals as a multiple of the raw limit

    def run(self, live: LiveServer, images: list[Path], raw_limit: float, seconds: float) -> LoadResult:
        server_pid = live.process.pid
        if self.client == "poisson":
            return open_loop("127.0.0.1", live.port, ENDPOINT, images, self.load * raw_limit, seconds,
                             server_pid=server_pid)
        return closed_loop("127.0.0.1", live.port, ENDPOINT, images, int(self.load), seconds, self.client,
                           server_pid=server_pid)


PHASES = ([Phase(f"plain, {n} client{'s' * (n > 1)}", "plain", n) for n in PLAIN_CLIENTS]
          + [Phase(f"yosoclient, {n} clients", "yosoclient", n) for n in POLITE_CLIENTS]
          + [Phase(f"open loop, {load:g} x raw", "poisson", load) for load in OPEN_LOOP_LOADS])


def _row(phase: Phase, result: LoadResult, ratios: list[float], steal: list[float], uses: list[CoreUse],
         cores: int) -> dict:
    use = CoreUse(*(statistics.median(values) for values in zip(*(astuple(each) for each in uses))))
    workers_x_raw = [ratio * cores / each.workers for ratio, each in zip(ratios, uses) if each.workers > 0]
    return {
        "phase": phase.label, "client": phase.client, "load": phase.load,
        "images_per_s": result.images_per_s, "x_raw": statistics.median(ratios), "x_raw_rounds": ratios,
        "cores": asdict(use), "cores_rounds": [asdict(use) for use in uses],
        "workers_x_raw": statistics.median(workers_x_raw) if workers_x_raw else math.nan,
        "host_steal": worst(steal), "host_steal_rounds": steal,
        "p50_ms": result.ok_ms(0.50), "p99_ms": result.ok_ms(0.99),
        "refused": result.refused, "refused_share": result.refused_share, "refusal_p99_ms": result.refused_ms(0.99),
        "errors": result.errors, "error_statuses": dict(result.error_statuses),
    }


def _echo_row(row: dict) -> None:
    errors = f"  errors {row['errors']} {row['error_statuses']}" if row["errors"] else ""
    click.echo(f"  {row['phase']:26s} {row['images_per_s']:5.1f} img/s ({row['x_raw']:.2f} x raw)  p50 "
               f"{row['p50_ms']:6.0f}  p99 {row['p99_ms']:6.0f} ms  refused {row['refused']:6d} "
               f"({row['refused_share']:6.1%}), p99 {row['refusal_p99_ms']:7.1f} ms  cores {CoreUse(**row['cores'])} "
               f"(workers {row['workers_x_raw']:.2f} x raw)  host stole {percent(row['host_steal'])}{errors}")


def _markdown(rows: list[dict], raw_limit: float, raw_steal: float, latency_ms: float, header: str) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.1f}"

    lines = [header, "",
             "| load | images/s | x raw limit | p50 ms | p99 ms | refused (503) | refusal p99 ms | errors "
             "| cores: workers / front / clients / others / idle | workers x raw | host stole |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| raw limit: decode + detect in-process, best layout | {raw_limit:.1f} | 1 "
             f"| {latency_ms:.0f} (one image) | | | | | | 1 | {percent(raw_steal)} |"]
    for row in rows:
        refused = f"{row['refused']} ({row['refused_share']:.1%})" if row["refused"] else "0"
        lines.append(f"| {row['phase']} | {row['images_per_s']:.1f} | {row['x_raw']:.2f} | {ms(row['p50_ms'])} | "
                     f"{ms(row['p99_ms'])} | {refused} | {ms(row['refusal_p99_ms'])} | {row['errors']} "
                     f"| {CoreUse(**row['cores'])} | {row['workers_x_raw']:.2f} | {percent(row['host_steal'])} |")
    return "\n".join(lines)


def _targets(rows: dict[str, dict], latency_ms: float, budget_s: float, task_ms: float) -> list[Target]:
    plain = {n: rows[f"plain, {n} client{'s' * (n > 1)}"] for n in PLAIN_CLIENTS}
    half, twice = rows["open loop, 0.8 x raw"], rows["open loop, 2 x raw"]
    targets = [Target(f"plain, {n} clients: goodput / raw limit", plain[n]["x_raw"], ">=", 0.95) for n in (4, 8, 32)]
    targets.append(Target("plain, 4, 8 and 32 clients: 503 answers",
                          sum(plain[n]["refused"] for n in (4, 8, 32)), "==", 0))
    targets.append(Target("retry storm, 128 plain clients: goodput / raw limit", plain[128]["x_raw"], ">=", 0.9))
    targets.append(Target("open loop at 0.8 x raw: share refused", half["refused_share"], "<=", 0.005))
    targets.append(Target("open loop at 2 x raw: goodput / raw limit", twice["x_raw"], ">=", 0.9))
    targets.append(Target(f"open loop at 2 x raw: accepted p99 (ms) <= budget + one task ({task_ms:.0f} ms)",
                          twice["p99_ms"], "<=", budget_s * 1000 + task_ms))
    targets.append(Target("open loop at 2 x raw: refusal p99 (ms)", twice["refusal_p99_ms"], "<=", 10))
    targets.append(Target("plain, 1 client: p50 - raw one-image latency (ms)", plain[1]["p50_ms"] - latency_ms,
                          "<=", 10))
    return targets


@click.command()
@model_option
@images_option
@click.option("--seconds", default=6.0, show_default=True, help="Measured seconds per phase.")
@rounds_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench/results/latest.json"),
              show_default=True, help="Where to write the JSON figures.")
@click.option("--markdown", is_flag=True, help="Also print the table as Markdown (docs/benchmark.md's).")
def main(model: str, image_dir: Path, seconds: float, rounds: int, out: Path, markdown: bool) -> None:
    """Measure the raw model and the server on this machine, and check the targets.

    Example: python -m bench --rounds 3 --seconds 6 --markdown
    """
    settings = load_settings()
    files = installed_files(model)
    image_paths = sorted(image_dir.glob("*.jpg"))
    images = [path.read_bytes() for path in image_paths]
    cores = os.cpu_count() or 1
    workers = settings.workers
    budget_s = settings.max_queue_wait_ms / 1000
    click.echo(f"yoso bench: {model}, {len(images)} images, {cores} cores, {workers} workers, {seconds:g} s per "
               f"phase, {rounds} rounds, wait budget {budget_s:g} s")

    click.echo("raw model, in-process (decode + detect, no HTTP):")
    layouts = every_layout(model, files, images, cores, seconds)
    for layout in layouts:
        click.echo(f"  {layout.layout:26s} {layout.images_per_s:5.1f} img/s")

    raw_runs, raw_steal, latencies_ms = [], [], []
    results: dict[Phase, list[LoadResult]] = {phase: [] for phase in PHASES}
    ratios: dict[Phase, list[float]] = {phase: [] for phase in PHASES}  # to the raw runs just before and after
    steal: dict[Phase, list[float]] = {phase: [] for phase in PHASES}

    with tempfile.TemporaryDirectory(prefix="yoso-bench-") as logs, \
            RawNets(model, files, images, best(layouts).processes, best(layouts).threads) as raw:
        def raw_run() -> float:
            with StealMeter() as meter:
                raw_runs.append(raw.run(seconds).images_per_s)
            raw_steal.append(meter.share)
            return raw_runs[-1]

        env = {"YOSO_PRELOAD_MODELS": model, "YOSO_DEFAULT_MODEL": model, "YOSO_WORKERS": str(workers),
               "YOSO_LOG_LEVEL": "warning"}
        live = LiveServer(env=env).start(Path(logs) / "server.log")
        try:
            click.echo(f"opening raw run ({raw.layout}): {raw_run():.1f} img/s, host stole {percent(raw_steal[-1])}")
            for n in range(rounds):
                latencies_ms.append(single_image_latency_ms(model, files, images, threads=cores))
                click.echo(f"round {n + 1}: one image {latencies_ms[-1]:.1f} ms")
                for phase in PHASES:
                    before = raw_runs[-1]
                    with StealMeter() as meter:
                        result = phase.run(live, image_paths, before, seconds)
                    after = raw_run()
                    results[phase].append(result)
                    ratios[phase].append(result.images_per_s / ((before + after) / 2))
                    steal[phase].append(meter.share)
                    click.echo(f"  {phase.label:26s} {result.images_per_s:5.1f} img/s ({ratios[phase][-1]:.2f} x raw), "
                               f"refused {result.refused}, cores {result.cores}, host stole {percent(meter.share)}; "
                               f"raw after {after:.1f} img/s")
        finally:
            live.stop()

    raw_limit, latency_ms = statistics.median(raw_runs), statistics.median(latencies_ms)
    rows = [_row(phase, LoadResult.merged(results[phase]), ratios[phase], steal[phase],
                 [result.cores for result in results[phase]], cores)
            for phase in PHASES]
    click.echo(f"raw limit (best layout, median of {len(raw_runs)} runs): {raw_limit:.1f} img/s; one image, "
               f"1 net x {cores} threads: {latency_ms:.1f} ms (median of rounds); host stole up to "
               f"{percent(worst(raw_steal))}")
    click.echo(f"server over HTTP, {ENDPOINT} (rounds pooled; x raw: median of the rounds):")
    for row in rows:
        _echo_row(row)
    task_ms = 1000 * cores / raw_limit  # one image on one core's share, as a busy worker runs it
    checks = _targets({row["phase"]: row for row in rows}, latency_ms, budget_s, task_ms)
    for check in checks:
        verdict = "met" if check.met else "MISSED"
        click.echo(f"  {verdict:6s} {check.name}: {check.value:.3f} {check.op} {check.bound:g}")

    when = time.strftime("%Y-%m-%d")
    machine = f"{cores} cores ({platform.processor() or platform.machine()}), OpenCV {cv2.__version__}"
    if markdown:
        header = (f"`python -m bench --rounds {rounds} --seconds {seconds:g}` on {when}: {model}, {workers} "
                  f"workers, {machine}, wait budget {budget_s:g} s.")
        click.echo(_markdown(rows, raw_limit, worst(raw_steal), latency_ms, header))
        click.echo("\n" + markdown_targets(checks))
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "model": model, "workers": workers,
        "seconds_per_phase": seconds, "rounds": rounds, "budget_s": budget_s,
        "raw": {"layouts": [asdict(layout) for layout in layouts], "limit_images_per_s": raw_limit,
                "limit_runs": raw_runs, "limit_runs_host_steal": raw_steal, "single_image_ms": latency_ms,
                "single_image_ms_rounds": latencies_ms},
        "server": rows,
        "targets": [asdict(check) | {"met": check.met} for check in checks],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(standard_json(report), indent=2, allow_nan=False))
    click.echo(f"figures written to {out}")


if __name__ == "__main__":
    main()
