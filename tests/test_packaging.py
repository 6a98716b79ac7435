"""The wheel carries only what serves (the yoso and yosoclient packages, no benchmark, no test helper), and
declares all that they need."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT


def test_the_wheel_holds_the_server_and_the_client_and_nothing_else(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("yoso-*.whl")
    modules = [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")]
    assert {name.split("/")[0] for name in modules} == {"yoso", "yosoclient"}, modules
    assert not [name for name in modules if "bench" in name], modules


def test_the_wheel_declares_every_package_the_server_and_client_import():
    """`pip install .` alone must give a server that starts: every third-party module imported by yoso/ and
    yosoclient/ comes from a declared requirement or from one of theirs."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    installable, todo = set(), [Requirement(line) for line in declared]
    while todo:  # the declared requirements and everything they require here (no extras, this Python)
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name not in installable and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            installable.add(name)
            todo += [Requirement(line) for line in importlib.metadata.requires(name) or []]
    providers = importlib.metadata.packages_distributions()
    imported = {alias.split(".")[0] for package in ("yoso", "yosoclient") for path in (ROOT / package).rglob("*.py")
                for alias in _imports(path)} - set(sys.stdlib_module_names) - {"yoso", "yosoclient"}
    undeclared = {module: providers[module] for module in imported
                  if not {canonicalize_name(dist) for dist in providers[module]} & installable}
    assert undeclared == {}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names
