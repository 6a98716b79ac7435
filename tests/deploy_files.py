"""Readers for the deployment files (Dockerfile, env files, YAML) and their guide, docs/deployment.md."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support import ROOT
from yoso.config import Settings

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "compose" / "stage"
K8S_DIR = ROOT / "deploy" / "k8s"
DEPLOYMENT_GUIDE = ROOT / "docs" / "deployment.md"
ENV_PREFIX = "YOSO_"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def dockerfile_arguments(keyword: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_instructions() if instruction == keyword]


def exec_form(arguments: str) -> list[str]:
    """A CMD/HEALTHCHECK in exec (JSON) form; shell form would leave the server without signals."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(item, str) for item in parsed), arguments
    return parsed


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker compose reads them (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def load_yaml_documents(path: Path) -> list[dict]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def settings_from(variables: dict[str, str]) -> Settings:
    """Settings as yoso would read them from exactly these YOSO_ variables; unknown names fail the test."""
    unknown = sorted(name for name in variables if name[len(ENV_PREFIX):].lower() not in Settings.model_fields)
    assert not unknown, f"variables yoso does not read: {unknown}"
    return Settings(_env_file=None, **{name[len(ENV_PREFIX):].lower(): value for name, value in variables.items()})


def set_to_their_default(variables: dict[str, str]) -> list[str]:
    """The variables that give a setting the value yoso would take without them."""
    configured, defaults = settings_from(variables), settings_from({})
    fields = {name: name[len(ENV_PREFIX):].lower() for name in variables}
    return sorted(name for name, field in fields.items() if getattr(configured, field) == getattr(defaults, field))
