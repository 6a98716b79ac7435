"""`python -m bench.engines`: the engines side by side, in one run: opencv f32, openvino f32, openvino bf16.

For each: inference alone (one thread, one blob prepared once, warmed; the engines take turns: bench.stages),
then, engine after engine (bench.engine_runs), the raw limit (decode + detect in-process, best layout of the
cores: bench.raw), where a request's time goes (decode, resize + blob, inference, post-processing, measured
in-process), and the server running it: a lone plain client's p50 (less the stages' sum: the HTTP front),
goodput at 4 plain keep-alive clients per worker, each worker's RSS. bf16 runs only where
yoso.config.precision_in_use says it does (a CPU with AMX or AVX512-BF16); elsewhere one line says why. Every
ratio is of figures of this run, and every row says what the host's hypervisor and the machine's other
processes took meanwhile. Prints the figures and the targets, writes them as JSON, and with --markdown the
tables as Markdown.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from pathlib import Path

import click
import cv2
import openvino

from bench.engine_runs import CLIENTS_PER_WORKER, EngineRun, run_engine
from bench.host import StealMeter
from bench.options import images_option, model_option
from bench.others import OthersMeter
from bench.raw import installed_files
from bench.report import Target, markdown_targets, percent, standard_json, worst
from bench.stages import STAGES, InferenceTiming, inference_alone
from yoso import imaging
from yoso.config import load_settings, precision_in_use
from yoso.cores import available_cores
from yoso.model.detector import blob_of
from yoso.model.engines import open_engine
from yoso.model.store import ModelFiles
from yoso.model.zoo import ZOO

ENGINES = (("opencv", "f32"), ("openvino", "f32"), ("openvino", "bf16"))
BASELINE = "opencv f32"
# the targets of each engine against the baseline: inference alone (>=), server goodput (>=), lone p50 (<=)
BOUNDS = {"openvino f32": (1.8, 1.7, 0.6), "openvino bf16": (8.0, 4.0, 0.3)}
OWN_RAW_BOUND = 0.9  # every engine's server goodput / its own raw limit
STAGE_PASSES = 5  # over the sample images, for the in-process stages


def not_runnable(engine: str, precision: str) -> str | None:
    """Why this machine would not run `engine` at `precision` (None when it does)."""
    used, why = precision_in_use(load_settings(engine=engine, inference_precision=precision))
    return None if used.value == precision else why


def inference_alone_of(model: str, files: ModelFiles, image: bytes, seconds: float,
                       runnable: list[tuple[str, str]]) -> tuple[dict[str, InferenceTiming], float, float]:
    """Inference alone of every runnable engine, in this process and in turns, and what the host's hypervisor
    and the machine's other processes took meanwhile (their shares of the CPU)."""
    input_size = ZOO[model].input_size
    engines = {f"{engine} {precision}": open_engine(engine, precision, files, input_size)
               for engine, precision in runnable}
    with StealMeter() as steal, OthersMeter() as others:
        alone = inference_alone(engines, blob_of([imaging.decode(image)], input_size), seconds)
    return alone, steal.share, others.share  # the engines and their threads go on return


def row_of(label: str, alone: InferenceTiming, alone_steal: float, alone_others: float, run: EngineRun) -> dict:
    in_process_ms = sum(run.stages_ms.values())
    return {
        "engine": label, "inference_ms": alone.median_ms, "inference_images_per_s": alone.images_per_s,
        "raw_layouts": {layout.layout: layout.images_per_s for layout in run.layouts},
        "raw_closing_images_per_s": run.closing_raw.images_per_s, "raw_limit_images_per_s": run.raw_limit,
        "goodput_images_per_s": run.goodput_images_per_s, "goodput_x_raw": run.goodput_images_per_s / run.raw_limit,
        "refused": run.refused, "errors": run.errors, "lone_p50_ms": run.lone_p50_ms,
        "worker_rss_ready_mb": run.worker_rss_ready_mb, "worker_rss_served_mb": run.worker_rss_served_mb,
        "worker_rss_mb": max(run.worker_rss_served_mb, default=math.nan),
        "host_steal": worst([alone_steal, run.host_steal]), "others_cpu": worst([alone_others, run.others_share]),
        "stages_ms": run.stages_ms, "in_process_ms": in_process_ms, "http_front_ms": run.lone_p50_ms - in_process_ms,
    }


def add_ratios(rows: dict[str, dict]) -> None:
    """Each row's figures as multiples of the baseline's (opencv f32), measured in this same run."""
    base = rows[BASELINE]
    for row in rows.values():
        row["inference_x_opencv"] = row["inference_images_per_s"] / base["inference_images_per_s"]
        row["goodput_x_opencv"] = row["goodput_images_per_s"] / base["goodput_images_per_s"]
        row["lone_p50_x_opencv"] = row["lone_p50_ms"] / base["lone_p50_ms"]


def targets(rows: dict[str, dict], clients: int) -> list[Target]:
    checks = []
    for label, (inference, goodput, lone) in BOUNDS.items():
        if label in rows:
            row = rows[label]
            checks += [Target(f"inference alone, 1 thread: {label} images/s / opencv's", row["inference_x_opencv"],
                              ">=", inference),
                       Target(f"server, {clients} plain clients: {label} goodput / opencv's", row["goodput_x_opencv"],
                              ">=", goodput),
                       Target(f"lone request p50: {label} / opencv's", row["lone_p50_x_opencv"], "<=", lone)]
    checks += [Target(f"server, {clients} plain clients: {label} goodput / its raw limit", row["goodput_x_raw"],
                      ">=", OWN_RAW_BOUND) for label, row in rows.items()]
    return checks


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def markdown_rows(rows: dict[str, dict], clients: int, cores: int) -> str:
    lines = [f"| engine | inference alone ms (1 thread) | inference images/s | x opencv | raw limit images/s (decode "
             f"+ detect) | server goodput images/s ({clients} clients) | x opencv | x own raw | lone request p50 ms "
             f"| x opencv | RSS per worker MB (largest) | host stole | other processes used |", "|---" * 13 + "|"]
    lines += [f"| {label} | {_ms(r['inference_ms'])} | {r['inference_images_per_s']:.1f} | "
              f"{r['inference_x_opencv']:.2f} | {r['raw_limit_images_per_s']:.1f} | {r['goodput_images_per_s']:.1f} | "
              f"{r['goodput_x_opencv']:.2f} | {r['goodput_x_raw']:.2f} | {_ms(r['lone_p50_ms'])} | "
              f"{r['lone_p50_x_opencv']:.2f} | {r['worker_rss_mb']:.0f} | {percent(r['host_steal'])} | "
              f"{percent(r['others_cpu'])} |"
              for label, r in rows.items()]
    lines += ["", f"Where a lone request's time goes (median ms in-process on {cores} threads, as the server runs a "
                  "lone request; HTTP front = lone request p50 - in-process total):", "",
              "| engine | " + " | ".join(STAGES) + " | in-process total | lone request p50 | HTTP front |",
              "|---|" + "---|" * (len(STAGES) + 3)]
    lines += [f"| {label} | " + " | ".join(_ms(r["stages_ms"][stage]) for stage in STAGES)
              + f" | {_ms(r['in_process_ms'])} | {_ms(r['lone_p50_ms'])} | {_ms(r['http_front_ms'])} |"
              for label, r in rows.items()]
    return "\n".join(lines)


def echo_row(label: str, r: dict) -> None:
    stages = ", ".join(f"{stage} {_ms(r['stages_ms'][stage])}" for stage in STAGES)
    click.echo(f"  {label:14s} inference alone {_ms(r['inference_ms'])} ms = {r['inference_images_per_s']:.1f} img/s "
               f"({r['inference_x_opencv']:.2f} x opencv); raw {r['raw_limit_images_per_s']:.1f} img/s; server "
               f"{r['goodput_images_per_s']:.1f} img/s ({r['goodput_x_opencv']:.2f} x opencv, {r['goodput_x_raw']:.2f}"
               f" x raw, refused {r['refused']}, errors {r['errors']}); lone p50 {_ms(r['lone_p50_ms'])} ms "
               f"({r['lone_p50_x_opencv']:.2f} x opencv); worker RSS {r['worker_rss_mb']:.0f} MB; host stole "
               f"{percent(r['host_steal'])}, other processes used {percent(r['others_cpu'])} of the CPU\n"
               f"  {'':14s} ms: {stages}, HTTP front {_ms(r['http_front_ms'])}")


@click.command()
@model_option
@images_option
@click.option("--seconds", default=10.0, show_default=True,
              help="Measured seconds per phase (the default run takes about 4 minutes).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench/results/engines.json"),
              show_default=True, help="Where to write the JSON figures.")
@click.option("--markdown", is_flag=True, help="Also print the tables as Markdown.")
def main(model: str, image_dir: Path, seconds: float, out: Path, markdown: bool) -> None:
    """Measure every engine raw and served on this machine, and check the targets.

    Example: python -m bench.engines --seconds 10 --markdown
    """
    started = time.monotonic()
    settings = load_settings()
    files = installed_files(model)
    image_paths = sorted(image_dir.glob("*.jpg"))
    images = [path.read_bytes() for path in image_paths]
    cores, workers = available_cores(), settings.workers  # the server's figures of both
    clients = CLIENTS_PER_WORKER * workers
    skipped = {f"{engine} {precision}": why for engine, precision in ENGINES
               if (why := not_runnable(engine, precision)) is not None}
    runnable = [(engine, precision) for engine, precision in ENGINES if f"{engine} {precision}" not in skipped]
    click.echo(f"yoso bench.engines: {model}, {len(images)} images, {cores} cores, {workers} workers, {seconds:g} s "
               f"per phase")
    for label, why in skipped.items():
        click.echo(f"{label}: not run: {why}")

    click.echo("inference alone, in-process (1 thread, engines in turns)")
    alone, alone_steal, alone_others = inference_alone_of(model, files, images[0], seconds, runnable)
    runs: dict[str, EngineRun] = {}
    with tempfile.TemporaryDirectory(prefix="yoso-bench-engines-") as logs:
        for engine, precision in runnable:
            label = f"{engine} {precision}"
            click.echo(f"{label}: raw limit, a request's stages, server, raw limit again")
            runs[label] = run_engine(model, files, engine, precision, image_paths, workers, cores, seconds,
                                     STAGE_PASSES, Path(logs) / f"{engine}-{precision}.log")
    rows = {label: row_of(label, alone[label], alone_steal, alone_others, runs[label]) for label in runs}
    add_ratios(rows)
    click.echo("engines (ratios: to opencv f32's figure of this run):")
    for label, row in rows.items():
        echo_row(label, row)
    checks = targets(rows, clients)
    for check in checks:
        verdict = "met" if check.met else "MISSED"
        click.echo(f"  {verdict:6s} {check.name}: {check.value:.3f} {check.op} {check.bound:g}")
    for label, why in skipped.items():
        click.echo(f"  not run {label} targets: {why}")
    click.echo(f"whole run: {time.monotonic() - started:.0f} s")

    when = time.strftime("%Y-%m-%d")
    machine = (f"{cores} cores ({platform.processor() or platform.machine()}), OpenCV {cv2.__version__}, "
               f"OpenVINO {openvino.__version__.split('-')[0]}")
    if markdown:
        click.echo(f"\n`python -m bench.engines --seconds {seconds:g}` on {when}: {model}, {workers} workers, "
                   f"{machine}.\n")
        click.echo(markdown_rows(rows, clients, cores))
        click.echo("".join(f"\n{label}: not run: {why}" for label, why in skipped.items()))
        click.echo("\n" + markdown_targets(checks))
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine, "model": model, "workers": workers,
              "clients": clients, "seconds_per_phase": seconds, "engines": rows, "not_run": skipped,
              "targets": [{"name": c.name, "value": c.value, "op": c.op, "bound": c.bound, "met": c.met}
                          for c in checks]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(standard_json(report), indent=2, allow_nan=False))
    click.echo(f"figures written to {out}")


if __name__ == "__main__":
    main()
