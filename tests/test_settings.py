"""YOSO_ settings: parsing, case-insensitivity, .env, dev mode, and a one-line error on a bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from yoso import config
from yoso.config import (DEFAULT_MODEL_DIR, ZOO_CLASSES, EngineName, Precision, Settings, SettingsError, load_settings,
                         precision_in_use)
from yoso.cores import available_cores
from yoso.serving.catalog import Catalog, CatalogError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.upper().startswith("YOSO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_serve_the_zoo_the_first_tiny_model_by_default_and_preload_the_installed_ones(model_store):
    settings = load_settings()
    assert (settings.host, settings.port, settings.dev_mode) == ("0.0.0.0", 8000, False)
    assert settings.model_class == list(ZOO_CLASSES) and settings.model_args == {}
    assert settings.model_dir == DEFAULT_MODEL_DIR
    assert settings.workers == available_cores()
    catalog = Catalog.from_settings(settings.model_copy(update={"model_dir": model_store.model_dir}))
    assert list(catalog.models) == ["yolov3-tiny", "yolov4-tiny", "yolov3", "yolov4"]
    assert catalog.default == "yolov3-tiny"
    assert catalog.preload == ["yolov3-tiny", "yolov4-tiny"]  # the installed ones


@pytest.mark.parametrize("name", ["YOSO_DEV_MODE", "YOSO_dev_mode", "yoso_Dev_Mode"])
def test_variables_are_case_insensitive(monkeypatch, name):
    monkeypatch.setenv(name, "true")
    assert load_settings().dev_mode is True


def test_lists_are_comma_separated(monkeypatch):
    monkeypatch.setenv("YOSO_PRELOAD_MODELS", "yolov4-tiny, yolov3-tiny")
    monkeypatch.setenv("YOSO_API_KEY", "one,two")
    settings = load_settings()
    assert settings.preload_models == ["yolov4-tiny", "yolov3-tiny"]
    assert settings.api_key == ["one", "two"]


def test_a_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("YOSO_PORT=9123\nYOSO_MAX_UPLOAD_MB=2.5\n")
    settings = load_settings()
    assert settings.port == 9123 and settings.max_upload_bytes == int(2.5 * 1024 * 1024)


def test_the_environment_wins_over_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("YOSO_PORT=9123\n")
    monkeypatch.setenv("YOSO_PORT", "9200")
    assert load_settings().port == 9200


@pytest.mark.parametrize("name, value", [("YOSO_PORT", "abc"), ("YOSO_PORT", "70000"), ("YOSO_WORKERS", "0"),
                                         ("YOSO_LOG_LEVEL", "loud"), ("YOSO_OTEL_INSTRUMENT_EXPORTER", "jaeger"),
                                         ("YOSO_WORKER_PRIORITY", "high"), ("YOSO_ENGINE", "tensorrt"),
                                         ("YOSO_INFERENCE_PRECISION", "fp16")])
def test_a_bad_value_raises_one_line_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.count("\n") == 0
    assert name.upper() in message and repr(value) in message


def test_the_wait_budget_is_2_s_and_the_queue_cap_64_per_worker_unless_set():
    assert Settings(workers=2).max_queue_wait_ms == 2000
    assert Settings(workers=1).queue_limit == 64
    assert Settings(workers=8).queue_limit == 512
    assert Settings(workers=3, max_queue=0).queue_limit == 0


def test_a_bad_value_stops_the_server_with_one_line_and_no_traceback():
    env = {**os.environ, "YOSO_PORT": "abc"}
    result = subprocess.run([sys.executable, "-m", "yoso.server"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        "yoso: bad setting YOSO_PORT='abc': Input should be a valid integer, unable to parse string as an integer"
    ]


def test_dev_env_vars_turns_dev_mode_on():
    script = f"source {ROOT / 'dev_env_vars'} && {sys.executable} -c " \
             "'from yoso.config import load_settings; print(load_settings().dev_mode)'"
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.upper().startswith("YOSO_")})
    assert result.stdout.strip() == "True", result.stderr


@pytest.mark.parametrize("variable", ["YOSO_PRELOAD_MODELS", "YOSO_DEFAULT_MODEL"])
def test_a_model_that_is_not_installed_stops_start_up_with_how_to_install_it(variable, tmp_path):
    env = {**os.environ, variable: "yolov4", "YOSO_MODEL_DIR": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "yoso.server"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("yoso: Model 'yolov")
    assert "yoso models pull" in result.stderr


def test_an_unknown_model_name_is_a_bad_setting(monkeypatch):
    monkeypatch.setenv("YOSO_PRELOAD_MODELS", "yolov3-tiny,yolov9")
    with pytest.raises(CatalogError, match="YOSO_PRELOAD_MODELS.*unknown model yolov9"):
        Catalog.from_settings(load_settings())


def test_model_args_that_are_not_json_are_a_bad_setting_in_one_line(monkeypatch):
    monkeypatch.setenv("YOSO_MODEL_ARGS", "{min_area: 5")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).count("\n") == 0 and "YOSO_MODEL_ARGS" in str(raised.value)


@pytest.mark.parametrize(("engine", "asked", "bf16", "runs", "why"), [
    ("openvino", "f32", "AMX", "f32", None),
    ("openvino", "bf16", "AMX", "bf16", None),
    ("openvino", "bf16", "AVX512-BF16", "bf16", None),
    ("openvino", "bf16", None, "f32", "this CPU has neither AMX nor AVX512-BF16"),
    ("opencv", "bf16", "AMX", "f32", "the opencv engine runs f32 only"),
])
def test_bf16_runs_only_on_openvino_and_a_cpu_that_computes_it(monkeypatch, engine, asked, bf16, runs, why):
    monkeypatch.setattr(config, "bf16_instructions", lambda: bf16)
    settings = Settings(engine=engine, inference_precision=asked)
    assert precision_in_use(settings) == (Precision(runs), why)


def test_the_default_engine_is_openvino_in_f32():
    settings = Settings()
    assert (settings.engine, settings.inference_precision) == (EngineName.openvino, Precision.f32)
