"""locustfile.py run headless, as docs/deployment.md shows, against real servers on the loopback."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, LiveServer

ENDPOINTS = {"/count_objects", "/detect", "/predict"}


def run_locust(host: str, csv_prefix: Path, seconds: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless", "-u", "4", "-r", "2",
         "-t", f"{seconds}s", "--host", host, "--csv", str(csv_prefix), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60,
    )


def stats_rows(csv_prefix: Path, kind: str = "stats") -> list[dict[str, str]]:
    with Path(f"{csv_prefix}_{kind}.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_a_headless_run_against_a_server_on_default_settings_has_no_failures(model_store, tmp_path):
    """Ordinary traffic (4 users, about 2 requests a second) on the settings a new user runs: not one 503."""
    defaults = LiveServer(env={})
    defaults.start(tmp_path / "server.log")
    prefix = tmp_path / "stats"
    try:
        result = run_locust(defaults.url, prefix, seconds=15)
    finally:
        defaults.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stats_rows(prefix)
    (total,) = [row for row in rows if row["Name"] == "Aggregated"]
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0
    named = {row["Name"] for row in rows} - {"Aggregated"}
    assert named and named <= ENDPOINTS  # requests are grouped by endpoint, whatever their query
    assert stats_rows(prefix, "exceptions") == []  # the locustfile itself raised nothing


def test_a_server_that_rejects_the_uploads_shows_as_failures(tmp_path):
    """Only 413s (uploads over a 1 KB limit): the locustfile must count them, and locust exit non-zero."""
    strict = LiveServer(env={"YOSO_MAX_UPLOAD_MB": "0.001", "YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny"})
    strict.start(tmp_path / "server.log")
    try:
        prefix = tmp_path / "stats"
        result = run_locust(strict.url, prefix, seconds=4)
    finally:
        strict.stop()
    assert result.returncode != 0
    (total,) = [row for row in stats_rows(prefix) if row["Name"] == "Aggregated"]
    assert int(total["Request Count"]) > 0
    assert total["Failure Count"] == total["Request Count"]
    assert any("413" in row["Error"] for row in stats_rows(prefix, "failures"))

