"""`python -m bench` runs end to end and writes its figures. Speed targets are read from its output
by people, never asserted here: these machines are too noisy for timed tests."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT

PHASES = ["plain, 1 client", "plain, 4 clients", "plain, 8 clients", "plain, 32 clients", "plain, 128 clients",
          "yosoclient, 32 clients", "yosoclient, 128 clients", "open loop, 0.5 x raw", "open loop, 0.8 x raw",
          "open loop, 1 x raw", "open loop, 2 x raw"]


def test_the_benchmark_measures_raw_and_every_kind_of_load_and_writes_json_and_markdown(model_store, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--seconds", "1", "--rounds", "1", "--out", str(out),
                             "--markdown"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "NaN" not in out.read_text()  # standard JSON: a quantile of nothing is null
    report = json.loads(out.read_text())
    assert len(report["raw"]["layouts"]) == 2
    assert len(report["raw"]["limit_runs"]) == 2  # a raw run before and after the one round
    assert report["raw"]["limit_images_per_s"] > 0 and report["raw"]["single_image_ms"] > 0
    rows = report["server"]
    assert [row["phase"] for row in rows] == PHASES
    assert {row["client"] for row in rows} == {"plain", "yosoclient", "poisson"}
    assert all(row["errors"] == 0 for row in rows), rows
    # what the hypervisor took meanwhile, from /proc/stat: a share, never missing on Linux
    assert all(0 <= share <= 1 for row in rows for share in row["host_steal_rounds"]), rows
    assert all(0 <= share <= 1 for share in report["raw"]["limit_runs_host_steal"])
    # one-second windows: polite clients refused once wait a second or more, but the others always get answers
    assert all(row["images_per_s"] > 0 for row in rows if row["client"] != "yosoclient"), rows
    storm = next(row for row in rows if row["phase"] == "plain, 128 clients")
    assert storm["refused"] > 0  # 128 clients cannot all wait within the 2 s budget
    assert len(report["targets"]) == 10 and "raw limit" in result.stdout
    for markdown in ("| load | images/s | x raw limit |", "| host stole |", "| plain, 128 clients |",
                     "| target | measured | bound | |"):
        assert markdown in result.stdout
