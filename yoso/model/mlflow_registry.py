"""The MLflow Model Registry as a yoso registry (yoso.model.registry): `models:/<name>/<version>` and
`models:/<name>@<alias>`, asked of the MLflow tracking server at YOSO_MLFLOW_TRACKING_URI (or MLFLOW_TRACKING_URI).

MLflow's client loads here only, when YOSO_MODEL_REGISTRY is set. Its defaults suit a notebook, not a server that
asks every few seconds: unless they are set, a request is retried once with a 10 s timeout (MLflow's own retries
hold a pull for minutes when the registry is down), and MLflow's usage telemetry is off.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from yoso.model.registry import RegistryError

CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
_URI = re.compile(r"models:/(?P<name>[^/@\s]+)(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>[A-Za-z0-9_-]+))")
_REASON = re.compile(r"\[Errno -?\d+\][^\"')]*|timed out")  # in urllib3's "Max retries exceeded ..."
T = TypeVar("T")


def _parse(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of a models:/ URI: one of version and alias is None."""
    matched = _URI.fullmatch(uri)
    if matched is None:
        raise RegistryError(f"{uri!r} is no MLflow model URI yoso takes: use models:/<name>/<version> (a number) "
                            "or models:/<name>@<alias>")
    return matched["name"], matched["version"], matched["alias"]


class MlflowRegistry:
    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not self.tracking_uri:
            raise RegistryError("no MLflow tracking server to ask: set YOSO_MLFLOW_TRACKING_URI (or "
                                "MLFLOW_TRACKING_URI), e.g. http://mlflow:5000")
        for variable, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(variable, value)  # before MLflow reads them
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def resolve(self, uri: str) -> str:
        name, version, alias = _parse(uri)
        if alias is not None:
            found = self._ask(lambda: self._client.get_model_version_by_alias(name, alias))
        else:
            found = self._ask(lambda: self._client.get_model_version(name, version))
        return f"models:/{name}/{found.version}"

    def download(self, source: str, into: Path) -> None:
        import mlflow.artifacts

        name, version, _ = _parse(source)
        artifacts = self._ask(lambda: self._client.get_model_version_download_uri(name, version))
        scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=into))  # beside the files: a rename moves them
        try:
            got = Path(self._ask(lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=artifacts, dst_path=str(scratch), tracking_uri=self.tracking_uri)))
            for path in [got] if got.is_file() else list(got.iterdir()):
                os.replace(path, into / path.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _ask(self, call: Callable[[], T]) -> T:
        """The answer of MLflow's client, or a one-line RegistryError: what the registry said, or why it could
        not be asked."""
        from mlflow.exceptions import MlflowException, RestException

        try:
            return call()
        except RestException as error:
            said = re.sub(r"^[A-Z_]+: ", "", error.message.strip()).rstrip(".")  # less its code
            raise RegistryError(f"the MLflow registry at {self.tracking_uri} says: {_one_line(said)}") from None
        except (MlflowException, OSError) as error:
            reason = _REASON.search(str(error))
            if reason is not None:
                raise RegistryError(f"cannot reach the MLflow registry at {self.tracking_uri}: {reason[0]}") from None
            raise RegistryError(f"MLflow at {self.tracking_uri}: {_one_line(str(error))}") from None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no reason given"
