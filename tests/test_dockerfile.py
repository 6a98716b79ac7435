"""The Dockerfile, read statically (no Docker engine runs here) and held to what the Makefile does.

The one part that runs for real is the HEALTHCHECK command, against a live server.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from docker.utils.build import exclude_paths
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.deploy_files import DOCKERFILE, ENV_PREFIX, dockerfile_arguments, dockerfile_instructions, exec_form
from tests.support import ROOT, LiveServer, free_port
from yoso.config import Settings
from yoso.model.zoo import TINY_MODELS

MAKEFILE = (ROOT / "Makefile").read_text()

# What the wheels may load from the system: glibc (libc6), libgcc-s1, libstdc++6 and zlib1g, all present
# in python:3.11-slim-bookworm (apt needs libstdc++6, dpkg needs zlib1g). Anything else needs an apt-get.
SLIM_BASE_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1", "linux-vdso.so.1",
}


def make_variable(name: str) -> str:
    return re.search(rf"^{name}\s*:?=\s*(.+)$", MAKEFILE, re.MULTILINE).group(1).strip()


def make_recipe(target: str) -> list[str]:
    """A Makefile target's commands, with $(PY) read as the image's `python`."""
    body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", MAKEFILE, re.MULTILINE).group(1)
    lines = [line.strip() for line in body.splitlines()]
    return [line.replace("$(PY)", "python").replace("$(MODELS)", make_variable("MODELS")) for line in lines]


def test_dockerfile_is_clean_under_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--format", "json", "--failure-threshold", "style", "--disable-ignore-pragma",
         str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


def test_base_image_is_a_pinned_slim_python_the_project_supports():
    (base,) = dockerfile_arguments("FROM")
    image, _, tag = base.partition(":")
    assert image == "python" and tag and "latest" not in tag
    match = re.fullmatch(r"(3\.\d+)(?:\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", tag)
    assert match, tag
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires_python).contains(match.group(1) + ".0")


def test_dependencies_are_installed_from_requirements_txt_before_the_code_is_copied():
    steps = dockerfile_instructions()
    copy_requirements = steps.index(("COPY", "requirements.txt ./"))
    install = steps.index(("RUN", "pip install --requirement requirements.txt"))
    first_code_copy = min(i for i, (keyword, args) in enumerate(steps) if keyword == "COPY" and "yoso" in args)
    assert copy_requirements < install < first_code_copy
    assert "-r requirements.txt" in " ".join(make_recipe(r"\$\(VENV\)/\.runtime"))


def test_the_image_runs_the_installed_package_with_no_source_tree_in_its_working_directory():
    """`python -m` puts the working directory first on sys.path: yoso's source there would shadow the copy
    pip installed (and run without its package data), so it is built elsewhere and removed."""
    workdir, built_in = "/", set()
    for keyword, arguments in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = arguments
        elif keyword == "COPY" and "yoso" in arguments.split():
            built_in.add(workdir)
    (build_dir,) = built_in
    assert f"pip install --no-deps . && rm -rf {build_dir}" in dockerfile_arguments("RUN")
    assert dockerfile_arguments("WORKDIR")[-1] != build_dir


def test_both_tiny_models_are_pulled_and_checked_at_build_time_like_make_models():
    pull = "python -m yoso models pull yolov3-tiny yolov4-tiny"
    assert pull in dockerfile_arguments("RUN")
    assert pull in make_recipe("models")
    # The image serves the zoo's tiny models without any download at start-up: the ones `make run` installs,
    # and so the ones preloaded by default (every model that can load).
    assert tuple(pull.split("pull ")[1].split()) == TINY_MODELS


def test_every_yoso_variable_the_image_sets_is_a_setting():
    variables = {}
    for arguments in dockerfile_arguments("ENV"):
        variables.update(re.findall(r"(\w+)=(\S+)", arguments))
    yoso = {name: value for name, value in variables.items() if name.startswith(ENV_PREFIX)}
    assert yoso == {"YOSO_MODEL_DIR": "/models"}
    assert all(name[len(ENV_PREFIX):].lower() in Settings.model_fields for name in yoso)


def test_the_image_runs_the_server_like_make_run_as_a_non_root_user_on_ports_8000_and_8001():
    (command,) = dockerfile_arguments("CMD")
    assert exec_form(command) == ["python", "-m", "yoso.server"]
    assert "python -m yoso.server" in make_recipe("run")
    user = dockerfile_arguments("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    ports = [str(Settings.model_fields[name].default) for name in ("port", "grpc_port")]
    assert dockerfile_arguments("EXPOSE") == [" ".join(ports)] == ["8000 8001"]


def healthcheck_command() -> list[str]:
    (healthcheck,) = dockerfile_arguments("HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    argv = exec_form(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_healthcheck_passes_on_a_live_server_and_fails_without_one(server: LiveServer):
    """The image's HEALTHCHECK, run for real: python's urllib only, so the slim image needs no curl."""
    up = subprocess.run(healthcheck_command(), env={"YOSO_PORT": str(server.port)}, capture_output=True, timeout=30)
    assert up.returncode == 0, up.stderr
    down = subprocess.run(healthcheck_command(), env={"YOSO_PORT": str(free_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0


def runtime_shared_objects() -> list[Path]:
    """Native modules and bundled libraries of every runtime requirement, as pip installs them in the image."""
    found = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-")):
            distribution = importlib.metadata.distribution(Requirement(line).name)
            found += [Path(distribution.locate_file(f)) for f in distribution.files or [] if ".so" in f.name]
    return found


# OpenVINO loads a device's plugin only when a model is compiled for that device: yoso compiles for the CPU, and
# the GPU plugin's OpenCL (the GPU driver's library) is never needed.
OTHER_DEVICES = {"libopenvino_intel_gpu_plugin.so"}


def test_the_wheels_need_no_system_library_beyond_the_slim_base():
    """Why the Dockerfile has no apt-get: ldd on every native module of the runtime requirements."""
    site_packages = Path(importlib.metadata.distribution("opencv-python-headless").locate_file(""))
    shared_objects = [path for path in runtime_shared_objects() if path.name not in OTHER_DEVICES]
    assert any(path.name.startswith("cv2") for path in shared_objects)
    needed = set()
    for path in shared_objects:
        output = subprocess.run(["ldd", str(path)], capture_output=True, text=True, timeout=30).stdout
        assert "not found" not in output, f"{path}: {output}"
        for line in output.splitlines():
            name, arrow, location = line.strip().partition(" => ")
            if arrow and not location.startswith(str(site_packages)):
                needed.add(name)
    assert needed <= SLIM_BASE_LIBRARIES, needed - SLIM_BASE_LIBRARIES


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_private():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(ROOT), patterns)
    for arguments in dockerfile_arguments("COPY"):
        *sources, _ = arguments.split()
        for source in sources:
            assert source in context, f"COPY {source}: excluded by .dockerignore"
    assert "yoso/model/coco.names" in context and "yoso/server.py" in context
    private = [p for p in context if p.split("/")[0] in {".git", ".venv", ".env", "tests", "models", "bench"}]
    assert not private
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]

