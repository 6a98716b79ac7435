"""Which version of each served model serves, and the swap to another without a failed request.

At start each model serves the highest complete version in the model repository (yoso.model.repository), or the
one YOSO_MODEL_VERSIONS pins; a model with no directory there serves its class's own files, as version 1.
`check(name)` (every YOSO_MODEL_POLL_S, and on POST /admin/models/{name}/reload) reads the repository again;
when another version should serve, it is loaded and warmed beside the serving one in each worker that holds the
model, one worker at a time and between its tasks; then tasks take it, the tasks still running finish on the old one, and the old one is unloaded.
A version that is incomplete, or fails to load or warm in any worker, is refused: one log line, a metric, and
it is not tried again until its files change. The serving version keeps serving meanwhile. `registry_for`
names the registry a YOSO_MODEL_REGISTRY URI pulls versions from.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from yoso.model.registry import Registry, RegistryError
from yoso.model.repository import ModelVersion, Repository
from yoso.serving.catalog import Catalog, ServedModel
from yoso.serving.pool import VersionRefused, WorkerPool

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Checked:
    """What a check found: the version serving after it, the one before, and a version refused, if any."""

    model: str
    version: int
    previous: int
    refused: str | None = None


class Versions:
    def __init__(self, repository: Repository, pinned: dict[str, int]) -> None:
        self.repository = repository
        self.pinned = pinned
        self._refused: dict[tuple[str, int], tuple[Fingerprint, str]] = {}
        self.refusals: Counter[str] = Counter()  # by model, start-up included (/metrics reads it)
        self._locks: dict[str, asyncio.Lock] = {}

    def choose(self, served: ServedModel) -> ServedModel:
        """The model at the version that should serve it: as it is when the repository has none, unless one is
        pinned (then that version's directory, which says why it cannot load)."""
        version, _ = self._wanted(served)
        pinned = self.pinned.get(served.name)
        if version is None and pinned is not None:
            version = ModelVersion(served.name, pinned, self.repository.root / served.name / str(pinned))
        if version is None:
            return served
        return replace(served, entry=replace(served.entry, version=version.number, directory=str(version.directory)))

    def available(self, name: str) -> list[int]:
        return [version.number for version in self.repository.versions(name)]

    async def check(self, catalog: Catalog, pool: WorkerPool, name: str) -> Checked:
        """Swap model `name` to the version that should serve it now, if another."""
        async with self._locks.setdefault(name, asyncio.Lock()):  # one swap of a model at a time
            served = catalog.models[name]
            previous = served.entry.version
            wanted, refused = await asyncio.to_thread(self._wanted, served)
            if wanted is None or (wanted.number == previous and str(wanted.directory) == served.entry.directory):
                return Checked(name, previous, previous, refused)
            entry = replace(served.entry, version=wanted.number, directory=str(wanted.directory))
            if wanted.number != previous and pool.workers_with(name):  # loaded everywhere before it serves
                try:
                    await pool.load_everywhere(entry)
                except VersionRefused as error:
                    return Checked(name, previous, previous, self._refuse(wanted, str(error)))
            # (The same number in another directory, `<name>/` moved to `<name>/1/`: workers keep what they hold.)
            pool.adopt(entry)  # tasks leaving the queue from now on run it
            catalog.models[name] = replace(served, entry=entry)
            if wanted.number != previous:
                pool.unload_everywhere(name, previous)  # after the tasks running on it: workers read in order
            log.info("model %s: version %d serves now (was %d)", name, wanted.number, previous)
            return Checked(name, wanted.number, previous, refused)

    def _wanted(self, served: ServedModel) -> tuple[ModelVersion | None, str | None]:
        """The highest complete version (or the pinned one), and why the last version passed over was refused."""
        pinned = self.pinned.get(served.name)
        refused = None
        for version in reversed(self.repository.versions(served.name)):
            if pinned is not None and version.number != pinned:
                continue
            known = self._refused.get((served.name, version.number))
            if known is not None and known[0] == _fingerprint(version.directory):
                refused = refused or known[1]
                continue
            problem = self.repository.checksum_problem(version) or served.unavailable(version.directory)
            if problem is None:
                return version, refused
            refused = refused or self._refuse(version, problem)
        return None, refused

    def _refuse(self, version: ModelVersion, why: str) -> str:
        """Remember the refusal until the version's files change; say it once, on one line."""
        why = " ".join(why.split()).removeprefix(f"model {version.name}: ")  # one line, the model named once
        message = f"model {version.name}: version {version.number} refused: {why}"
        self._refused[(version.name, version.number)] = (_fingerprint(version.directory), message)
        log.error("%s; the serving version carries on", message)
        self.refusals[version.name] += 1
        return message


def registry_for(uri: str, tracking_uri: str | None) -> Registry:
    """The registry a YOSO_MODEL_REGISTRY URI names."""
    if uri.startswith("models:/"):
        from yoso.model.mlflow_registry import MlflowRegistry  # mlflow's client loads only when it is used

        return MlflowRegistry(tracking_uri)
    raise RegistryError(f"{uri!r} is no registry URI yoso knows: use models:/<name>/<version> or "
                        "models:/<name>@<alias> (MLflow)")


def _fingerprint(directory: Path) -> Fingerprint:
    """What changes when a file of the directory is added, removed, rewritten or touched."""
    try:
        stats = [(path.name, path.stat()) for path in directory.iterdir() if path.is_file()]
    except OSError:
        return ()
    return tuple(sorted((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats))
