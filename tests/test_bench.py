"""`python -m yoso.bench` runs end to end and writes its figures. Speed targets are read from its output
by people, never asserted here: these machines are too noisy for timed tests."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def test_the_benchmark_measures_raw_and_server_phases_and_writes_json(model_store, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "yoso.bench", "--seconds", "1", "--rounds", "1", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "NaN" not in out.read_text()  # standard JSON: a quantile of nothing is null
    report = json.loads(out.read_text())
    assert len(report["raw"]["layouts"]) == 2
    assert len(report["raw"]["limit_rounds"]) == 2  # a raw run before and after the one round
    assert report["raw"]["limit_images_per_s"] > 0 and report["raw"]["single_image_ms"] > 0
    phases = [row["phase"] for row in report["server"]]
    assert len(phases) == 5 and phases[3].startswith("overload")
    assert all(row["images_per_s"] > 0 and row["errors"] == 0 for row in report["server"])
    assert len(report["targets"]) == 5 and "raw limit" in result.stdout
