"""The GitHub workflow runs the same test command as .ci/run and builds the image from the Dockerfile."""

from __future__ import annotations

import re

import yaml

from tests.deploy_files import dockerfile_arguments
from tests.support import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert workflow[True] is not None  # YAML 1.1 reads the `on:` key as True
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def commands() -> list[str]:
    return [line.strip() for step in steps() for line in step.get("run", "").splitlines()]


def test_workflow_runs_the_test_command_of_ci_run():
    ci_run = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in ci_run
    assert "make test" in commands()


def test_workflow_sets_up_the_python_the_image_runs():
    (base,) = dockerfile_arguments("FROM")
    image_python = re.match(r"python:(3\.\d+)", base).group(1)
    versions = [step["with"]["python-version"] for step in steps()
                if step.get("uses", "").startswith("actions/setup-python")]
    assert versions == [image_python]


def test_workflow_builds_the_image_and_checks_it_serves():
    lines = commands()
    assert "docker build -t yoso-server ." in lines
    assert any(line.startswith("docker run") and "yoso-server" in line for line in lines)
    assert any("/readyz" in line for line in lines) and any("/count_objects" in line for line in lines)


def test_the_container_logs_are_shown_when_the_image_check_fails():
    """A `run:` script stops at its first failing command (bash -e): the logs need a step of their own."""
    [logs] = [step for step in steps() if "docker logs" in step.get("run", "")]
    assert logs["if"] == "failure()"
