"""The model repository: `$YOSO_MODEL_DIR/<name>/<version>/`, positive integer versions, each directory holding
one version's files. A model whose files lie in `<name>/` itself (the layout before versions) has them read as
version 1, so that no install breaks.

A version is complete when the files its class needs are there (the class's `unavailable(directory)` says) and,
if the directory holds a `SHA256SUMS` file (`sha256sum` output), every file it lists matches. New versions
arrive atomically: written into a hidden directory beside the others, then renamed to their number.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from yoso.model.store import sha256_of

SUMS = "SHA256SUMS"
_NUMBER = re.compile(r"[1-9][0-9]*")
_SUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    number: int
    directory: Path


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self._verified: dict[tuple[Path, int, int], str] = {}

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of the model in the repository, lowest first."""
        home = self.root / name
        try:
            entries = list(home.iterdir())
        except OSError:
            return []
        numbered = {int(entry.name): entry for entry in entries if _NUMBER.fullmatch(entry.name) and entry.is_dir()}
        if 1 not in numbered and any(entry.is_file() and not entry.name.startswith(".") for entry in entries):
            numbered[1] = home  # the flat layout: version 1
        return [ModelVersion(name, number, numbered[number]) for number in sorted(numbered)]

    def checksum_problem(self, version: ModelVersion) -> str | None:
        """Why the version's files do not match its SHA256SUMS (None when they do, or when it has none)."""
        sums = version.directory / SUMS
        if not sums.is_file():
            return None
        for line_number, line in enumerate(sums.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            matched = _SUM_LINE.fullmatch(line.strip())
            if matched is None:
                return f"{sums} line {line_number} is not `<sha256>  <file>`"
            digest, file_name = matched.group(1).lower(), matched.group(2)
            path = (version.directory / file_name).resolve()
            if version.directory.resolve() not in path.parents:
                return f"{sums} names {file_name!r}, outside the version's directory"
            if not path.is_file():
                return f"{file_name} is listed in {SUMS} but missing"
            if self._digest(path) != digest:
                return f"{file_name} does not match its sha256 in {SUMS} (truncated or changed?)"
        return None

    def _digest(self, path: Path) -> str:
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key not in self._verified:
            self._verified[key] = sha256_of(path)
        return self._verified[key]

    def next_number(self, name: str) -> int:
        return max((version.number for version in self.versions(name)), default=0) + 1

    @contextmanager
    def incoming(self, name: str) -> Iterator[Path]:
        """A hidden directory to write a new version into; `publish` it once complete (else it is removed)."""
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=home))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def publish(self, name: str, staging: Path) -> ModelVersion:
        """Rename a complete staging directory to the next version number, atomically."""
        while True:
            number = self.next_number(name)
            target = self.root / name / str(number)
            try:
                os.rename(staging, target)  # fails if another writer took the number first: try the next
            except OSError:
                if target.exists():
                    continue
                raise
            target.chmod(0o755)
            return ModelVersion(name, number, target)
