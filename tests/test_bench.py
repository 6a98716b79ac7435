"""`python -m bench` and `python -m bench.engines` run end to end and write their figures. Speed targets are
read from their output by people, never asserted here: these machines are too noisy for timed tests. That every
row and every target is measured and printed is asserted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.support import ROOT

PHASES = ["plain, 1 client", "plain, 4 clients", "plain, 8 clients", "plain, 32 clients", "plain, 128 clients",
          "yosoclient, 32 clients", "yosoclient, 128 clients", "open loop, 0.5 x raw", "open loop, 0.8 x raw",
          "open loop, 1 x raw", "open loop, 2 x raw"]


def test_the_benchmark_measures_raw_and_every_kind_of_load_and_writes_json_and_markdown(model_store, tmp_path):
    out = tmp_path / "bench.json"
    # A 1 s wait budget: 128 clients hold about 2 s of work here (15 ms an image on two workers), over it on any
    # host; with the default 2 s, a fast spell of the host let them all wait.
    result = subprocess.run([sys.executable, "-m", "bench", "--seconds", "1", "--rounds", "1", "--out", str(out),
                             "--markdown"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "YOSO_MAX_QUEUE_WAIT_MS": "1000"})
    assert result.returncode == 0, result.stderr
    assert "NaN" not in out.read_text()  # standard JSON: a quantile of nothing is null
    report = json.loads(out.read_text())
    assert len(report["raw"]["layouts"]) == 2
    assert len(report["raw"]["limit_runs"]) == 1 + len(PHASES)  # a raw run before the first phase and after each
    assert report["raw"]["limit_images_per_s"] > 0 and report["raw"]["single_image_ms"] > 0
    rows = report["server"]
    assert [row["phase"] for row in rows] == PHASES
    assert {row["client"] for row in rows} == {"plain", "yosoclient", "poisson"}
    assert all(row["errors"] == 0 for row in rows), rows
    # what the hypervisor took meanwhile, from /proc/stat: a share, never missing on Linux
    assert all(0 <= share <= 1 for row in rows for share in row["host_steal_rounds"]), rows
    assert all(0 <= share <= 1 for share in report["raw"]["limit_runs_host_steal"])
    # where the cores went in each window, from psutil and /proc/stat: every part measured, the workers busiest
    # under load, and the front (HTTP, admission, the queue) and the clients using some but never most of it
    parts = ("workers", "front", "clients", "others", "idle")
    assert all(set(row["cores"]) == set(parts) and all(row["cores"][part] >= 0 for part in parts) for row in rows)
    busy = next(row for row in rows if row["phase"] == "plain, 8 clients")["cores"]
    assert busy["workers"] > busy["front"] > 0 and busy["workers"] > busy["clients"] > 0, busy
    assert all(row["workers_x_raw"] > 0 for row in rows if row["images_per_s"] > 0), rows
    # one-second windows: polite clients refused once wait a second or more, but the others always get answers
    assert all(row["images_per_s"] > 0 for row in rows if row["client"] != "yosoclient"), rows
    storm = next(row for row in rows if row["phase"] == "plain, 128 clients")
    assert storm["refused"] > 0  # 128 clients cannot all wait within the 1 s budget
    assert len(report["targets"]) == 10 and "raw limit" in result.stdout
    for markdown in ("| load | images/s | x raw limit |", "| cores: workers / front / clients / others / idle |",
                     "| host stole |", "| plain, 128 clients |",
                     "| target | measured | bound | |"):
        assert markdown in result.stdout


ENGINES = ["opencv f32", "openvino f32", "openvino bf16"]
STAGES = ["decode", "resize + blob", "inference", "post-processing"]


def _engine_targets(measured: list[str], clients: int) -> list[str]:
    names = []
    for engine in ("openvino f32", "openvino bf16"):
        if engine in measured:
            names += [f"inference alone, 1 thread: {engine} images/s / opencv's",
                      f"server, {clients} plain clients: {engine} goodput / opencv's",
                      f"lone request p50: {engine} / opencv's"]
    return names + [f"server, {clients} plain clients: {engine} goodput / its raw limit" for engine in measured]


def test_the_engine_benchmark_measures_every_engine_raw_and_served_and_prints_every_row_and_target(model_store,
                                                                                                  tmp_path):
    out = tmp_path / "engines.json"
    result = subprocess.run([sys.executable, "-m", "bench.engines", "--seconds", "0.5", "--out", str(out),
                             "--markdown"], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "NaN" not in out.read_text()
    report = json.loads(out.read_text())
    rows, skipped = report["engines"], report["not_run"]
    assert list(rows) + list(skipped) == ENGINES  # bf16 is the only one a CPU may not run, and says why
    assert "opencv f32" in rows and "openvino f32" in rows
    for engine, why in skipped.items():
        assert why and f"{engine}: not run: {why}" in result.stdout
    for engine, row in rows.items():
        assert result.stdout.count(f"| {engine} |") == 2  # the engines' table and the one of a request's time
        assert row["errors"] == 0 and row["refused"] == 0, row
        assert row["inference_images_per_s"] > 0 and row["inference_ms"] > 0
        assert row["raw_limit_images_per_s"] > 0 and len(row["raw_layouts"]) == 2
        assert row["goodput_images_per_s"] > 0 and row["lone_p50_ms"] > 0
        assert len(row["worker_rss_served_mb"]) == report["workers"], row  # every worker, not the resource tracker
        assert all(50 < rss < 4000 for rss in row["worker_rss_ready_mb"] + row["worker_rss_served_mb"]), row
        assert list(row["stages_ms"]) == STAGES and all(ms > 0 for ms in row["stages_ms"].values()), row
        assert 0 <= row["host_steal"] <= 1 and 0 <= row["others_cpu"] <= 1, row
        assert abs(row["http_front_ms"] - (row["lone_p50_ms"] - sum(row["stages_ms"].values()))) < 1e-6
    assert rows["opencv f32"]["inference_x_opencv"] == rows["opencv f32"]["goodput_x_opencv"] == 1
    names = _engine_targets(list(rows), report["clients"])
    assert [target["name"] for target in report["targets"]] == names
    for target in report["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        assert re.search(rf"^  {verdict} +{re.escape(target['name'])}: ", result.stdout, re.MULTILINE), target
        assert f"| {target['name']} |" in result.stdout
    for header in ("| engine | inference alone ms (1 thread) |", "| engine | decode | resize + blob | inference |",
                   "| target | measured | bound | |"):
        assert header in result.stdout


def test_the_ceiling_runs_the_raw_model_beside_each_load_on_a_bare_front_and_prints_every_ratio(model_store):
    result = subprocess.run([sys.executable, "-m", "bench.ceiling", "--seconds", "1", "--rounds", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "raw model as " in result.stdout
    loads = ["plain, 4 clients", "plain, 8 clients", "plain, 32 clients", "open loop, 2 x raw"]
    for load in loads:
        # the front answered (it reads each upload: a load that failed would count no image), and the raw model ran
        # beside it: a ratio that is a number and not a spell of nothing
        line = re.search(rf"^round 1, {re.escape(load)} +raw +([\d.]+) \| beside +([\d.]+) while the front "
                         rf"answered +([\d.]+)/s \| raw +([\d.]+) img/s: ([\d.]+) x raw$", result.stdout, re.MULTILINE)
        assert line, (load, result.stdout)
        before, beside, answered, after, ratio = map(float, line.groups())
        assert min(before, beside, answered, after) > 0 and 0.3 < ratio < 1.5, line.group(0)
        assert re.search(rf"^\| {re.escape(load)} \| [\d.]+ \| [\d.]+ \| >= 0\.9", result.stdout, re.MULTILINE)
