"""`python -m yoso.bench`: raw model limits, then the server over HTTP at rising concurrency, in one run.

Prints a table and the targets, and writes the figures as JSON. Every ratio compares figures taken in
this one run on this one machine.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import cv2

from yoso.bench.live_server import LiveServer
from yoso.bench.load import LoadResult, run_load
from yoso.bench.raw import nets_per_core, one_net_all_cores, single_image_latency_ms
from yoso.config import load_settings
from yoso.model.store import ModelStore
from yoso.model.zoo import ZOO

ENDPOINT = "/count_objects"
_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    op: str
    bound: float

    @property
    def met(self) -> bool:
        return _COMPARE[self.op](self.value, self.bound)


def _row(label: str, result: LoadResult) -> dict:
    row = {
        "phase": label,
        "concurrency": result.concurrency,
        "images_per_s": result.images_per_s,
        "p50_ms": result.ok_ms(0.50),
        "p95_ms": result.ok_ms(0.95),
        "p99_ms": result.ok_ms(0.99),
        "errors": result.errors,
        "error_statuses": dict(result.error_statuses),
        "shed_share": result.shed_share,
        "shed_p99_ms": result.shed_ms(0.99),
    }
    click.echo(f"  {label:28s} c={result.concurrency:<3d} {row['images_per_s']:6.1f} img/s  p50 {row['p50_ms']:6.1f}  "
               f"p99 {row['p99_ms']:6.1f} ms  shed {row['shed_share']:5.1%}  errors {row['errors']}"
               + (f" {row['error_statuses']}" if row["errors"] else ""))
    return row


def _standard_json(value: object) -> object:
    """NaN (a quantile of no requests, e.g. no request shed) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _standard_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_standard_json(item) for item in value]
    return value


def _load(live: LiveServer, images: list[Path], concurrency: int, seconds: float) -> LoadResult:
    return run_load("127.0.0.1", live.port, ENDPOINT, images, concurrency, seconds)


def _start_server(model: str, workers: int, extra: dict[str, str], log_dir: Path) -> LiveServer:
    env = {"YOSO_PRELOAD_MODELS": model, "YOSO_DEFAULT_MODEL": model, "YOSO_WORKERS": str(workers),
           "YOSO_LOG_LEVEL": "warning", **extra}
    return LiveServer(env=env).start(log_dir / f"server-{len(list(log_dir.iterdir()))}.log")


@click.command()
@click.option("--model", default="yolov3-tiny", show_default=True, help="Model to benchmark.")
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("tests/data"), show_default=True, help="Directory of JPEG sample images.")
@click.option("--seconds", default=6.0, show_default=True, help="Measured seconds per phase.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 20),
              help="Rounds of raw model, then the server at 1, 4 x and 16 x workers; ratios are their medians.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench/results/latest.json"),
              show_default=True, help="Where to write the JSON figures.")
def main(model: str, image_dir: Path, seconds: float, rounds: int, out: Path) -> None:
    """Measure the raw model and the server on this machine, and check the targets.

    Example: python -m yoso.bench --rounds 5 --seconds 6
    """
    settings = load_settings()
    files = ModelStore(settings.model_dir).files(ZOO[model])
    if files is None:
        raise click.ClickException(f"{model} is not installed: run `python -m yoso.models pull {model}`")
    image_paths = sorted(image_dir.glob("*.jpg"))
    images = [path.read_bytes() for path in image_paths]
    cores = os.cpu_count() or 1
    workers = settings.workers
    click.echo(f"yoso bench: {model}, {len(images)} images, {cores} cores, {workers} workers, {seconds:g} s/phase")

    click.echo("raw model, in-process (decode + detect, no HTTP):")
    layouts = [one_net_all_cores(model, files, images, cores, seconds), nets_per_core(model, files, images, cores, seconds)]
    for layout in layouts:
        click.echo(f"  {layout.layout:28s} {layout.images_per_s:6.1f} img/s")
    best_layout = nets_per_core if layouts[1].images_per_s >= layouts[0].images_per_s else one_net_all_cores

    raw_rounds, latencies_ms, single, full, overload = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="yoso-bench-") as logs:
        log_dir = Path(logs)
        live = _start_server(model, workers, {}, log_dir)
        try:
            at_workers = _load(live, image_paths, workers, seconds)
            # The host's speed drifts by up to a fifth within a minute: each round measures the raw model
            # and then the server, and every server figure is compared with the raw runs on either side of it.
            click.echo(f"{rounds} rounds of raw model, then the server at concurrency 1, 4 x and 16 x workers:")
            for n in range(rounds):
                raw_rounds.append(best_layout(model, files, images, cores, seconds).images_per_s)
                latencies_ms.append(single_image_latency_ms(model, files, images, threads=cores))
                single.append(_load(live, image_paths, 1, seconds))
                full.append(_load(live, image_paths, 4 * workers, seconds))
                overload.append(_load(live, image_paths, 16 * workers, seconds))
                click.echo(f"  round {n + 1}: raw {raw_rounds[-1]:5.1f} img/s, one image {latencies_ms[-1]:5.1f} ms;"
                           f" server c=1 {single[-1].images_per_s:5.1f}, c={4 * workers} {full[-1].images_per_s:5.1f},"
                           f" c={16 * workers} {overload[-1].images_per_s:5.1f} img/s")
            raw_rounds.append(best_layout(model, files, images, cores, seconds).images_per_s)
            click.echo(f"  closing raw run: {raw_rounds[-1]:5.1f} img/s")
        finally:
            live.stop()
        live = _start_server(model, workers, {"YOSO_MAX_BATCH_SIZE": "4", "YOSO_MAX_BATCH_DELAY_MS": "5"}, log_dir)
        try:
            batching = _load(live, image_paths, 4 * workers, seconds)
        finally:
            live.stop()

    brackets = [(before + after) / 2 for before, after in itertools.pairwise(raw_rounds)]
    full_ratios = [result.images_per_s / raw for result, raw in zip(full, brackets)]
    overload_ratios = [result.images_per_s / raw for result, raw in zip(overload, brackets)]
    raw_limit = statistics.median(raw_rounds)
    latency_ms = statistics.median(latencies_ms)
    click.echo(f"raw limit (best layout, median of {len(raw_rounds)} runs): {raw_limit:.1f} img/s;"
               f" one image, 1 net x {cores} threads: {latency_ms:.1f} ms (median of rounds)")
    click.echo("server over HTTP, /count_objects, keep-alive clients (rounds pooled):")
    rows = [_row("concurrency 1", LoadResult.merged(single)),
            _row("concurrency = workers", at_workers),
            _row("concurrency = 4 x workers", LoadResult.merged(full)),
            _row("overload: 16 x workers", LoadResult.merged(overload)),
            _row("batching on (4, 5 ms), 4 x w", batching)]
    single_row, overload_row = rows[0], rows[3]
    checks = [
        Target("server / raw limit at 4 x workers (median of rounds)", statistics.median(full_ratios), ">=", 0.95),
        Target("p50 at concurrency 1 - raw single-image latency (ms)", single_row["p50_ms"] - latency_ms, "<=", 10),
        Target("overload goodput / raw limit (median of rounds)", statistics.median(overload_ratios), ">=", 0.9),
        Target("overload p99 of accepted / p50 at concurrency 1", overload_row["p99_ms"] / single_row["p50_ms"], "<=", 4),
        Target("overload: p99 of a shed request (ms)", overload_row["shed_p99_ms"], "<", 5),
    ]
    for check in checks:
        click.echo(f"  {'met' if check.met else 'MISSED':6s} {check.name}: {check.value:.3f} {check.op} {check.bound:g}")

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": cores, "cpu": platform.processor() or platform.machine(), "opencv": cv2.__version__},
        "model": model, "workers": workers, "seconds_per_phase": seconds,
        "raw": {"layouts": [asdict(layout) for layout in layouts], "limit_images_per_s": raw_limit,
                "limit_rounds": raw_rounds, "single_image_ms": latency_ms, "single_image_ms_rounds": latencies_ms},
        "paired_ratios": {"full_load": full_ratios, "overload": overload_ratios},
        "server": rows,
        "targets": [asdict(check) | {"met": check.met} for check in checks],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_standard_json(report), indent=2, allow_nan=False))
    click.echo(f"figures written to {out}")


if __name__ == "__main__":
    main()
