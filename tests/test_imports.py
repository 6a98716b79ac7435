"""Imports cost only where they are used: the server process (which never touches an image) loads neither
OpenCV nor NumPy, and loads an OpenTelemetry exporter only when it is the one chosen. Each check runs in a
fresh interpreter, so that nothing another test imported can hide an import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import ROOT

PROBE = """
import json, sys
from yoso.app import create_app
from yoso.config import load_settings
create_app(load_settings())
print(json.dumps(sorted(sys.modules)))
"""


def modules_loaded_by_the_server(**env: str) -> set[str]:
    variables = {key: value for key, value in os.environ.items() if not key.startswith(("YOSO_", "OTEL_"))}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=variables | env, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(json.loads(done.stdout))


def test_the_server_process_loads_no_engine_numpy_or_tracing_sdk_by_default():
    loaded = modules_loaded_by_the_server()
    assert not {name for name in loaded if name.split(".")[0] in ("cv2", "numpy", "PIL", "openvino", "onnx")}
    assert not {name for name in loaded if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))}


@pytest.mark.parametrize(("exporter", "module", "unused"), [
    ("console", None, ("opentelemetry.exporter.zipkin", "opentelemetry.exporter.otlp")),
    ("zipkin", "opentelemetry.exporter.zipkin", ("opentelemetry.exporter.otlp",)),
    ("otlp", "opentelemetry.exporter.otlp", ("opentelemetry.exporter.zipkin",)),
])
def test_tracing_loads_only_the_exporter_it_uses(exporter, module, unused):
    loaded = modules_loaded_by_the_server(YOSO_OTEL_INSTRUMENT="true", YOSO_OTEL_INSTRUMENT_EXPORTER=exporter)
    assert module is None or any(name.startswith(module) for name in loaded)
    assert not {name for name in loaded if name.startswith(unused)}
