"""Dev mode: the server reloads when its code changes, and serves real detections after the reload."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from time import time_ns

import httpx

from tests.support import ROOT, LiveServer, eventually, image_bytes


def test_dev_mode_reloads_on_code_change_and_keeps_serving(model_store, tmp_path):
    live = LiveServer(env={"YOSO_DEV_MODE": "true", "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_WORKERS": "1"})
    live.start(tmp_path / "dev.log")
    watched = ROOT / "yoso" / "__init__.py"
    try:
        first = httpx.post(live.url + "/count_objects", files={"file": ("car.jpg", image_bytes("car.jpg"))})
        assert first.json() == {"items": {"car": 1}}
        # What saving the file in an editor does. The reloader compares modification times with those it noted
        # 0.25 s after it started (long before the server it started was ready): a later one, even on a file
        # system that keeps whole seconds, is a change.
        noted = watched.stat()
        os.utime(watched, ns=(noted.st_atime_ns, max(time_ns(), noted.st_mtime_ns + 1_000_000_000)))
        # the old server process may answer /readyz until the reloader has stopped it: wait for the new one
        assert eventually(lambda: live.log().count("Started server process") == 2, timeout_s=60), live.log()
        assert "Reloading" in live.log(), live.log()
        live.wait_until("/readyz", 60)
        again = httpx.post(live.url + "/count_objects", files={"file": ("car.jpg", image_bytes("car.jpg"))})
        assert again.json() == {"items": {"car": 1}}
    finally:
        assert live.stop() == 0


def test_the_yoso_console_script_lists_models():
    script = Path(sys.executable).parent / "yoso"
    result = subprocess.run([str(script), "models", "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "yolov3-tiny" in result.stdout and "yolov4" in result.stdout
