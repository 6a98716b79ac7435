"""Model registries: where versions come from besides files dropped into the model repository.

`YOSO_MODEL_REGISTRY` maps a served model to a registry URI that may move (an MLflow alias,
`models:/detector@production`) or not (`models:/detector/3`). `pull` asks the registry which version the URI
names now and, unless the repository already holds it, downloads it as the repository's next version, atomically,
marked with where it came from. That version then serves: the URI pins the model, so moving the alias back
swaps back. A registry is one small class (`Registry`); MLflow's is yoso.model.mlflow_registry (chosen by URI in yoso.serving.versions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from yoso.model.repository import ModelVersion, Repository

MARK = ".registry.json"  # in a version pulled from a registry: {"source": <the immutable URI>, "uri": <as asked>}


class RegistryError(RuntimeError):
    """The registry could not be asked, or the version not downloaded: the message says which and why."""


class Registry(Protocol):
    def resolve(self, uri: str) -> str:
        """The immutable URI of the version `uri` names now (an alias resolved: `models:/detector/3`)."""

    def download(self, source: str, into: Path) -> None:
        """The files of that version, into the empty directory `into` (flat: no directory of their own)."""


def pull(repository: Repository, registry: Registry, name: str, uri: str) -> ModelVersion:
    """The repository's version of model `name` holding what `uri` names now, downloaded first if need be."""
    source = registry.resolve(uri)
    for version in reversed(repository.versions(name)):
        if _source_of(version) == source:
            return version
    with repository.incoming(name) as staging:
        registry.download(source, staging)
        (staging / MARK).write_text(json.dumps({"source": source, "uri": uri}) + "\n")
        return repository.publish(name, staging)


def _source_of(version: ModelVersion) -> str | None:
    try:
        return json.loads((version.directory / MARK).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None
