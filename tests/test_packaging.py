"""The wheel carries only what serves: the yoso and yosoclient packages, no benchmark and no test helper."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.support import ROOT


def test_the_wheel_holds_the_server_and_the_client_and_nothing_else(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("yoso-*.whl")
    modules = [name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")]
    assert {name.split("/")[0] for name in modules} == {"yoso", "yosoclient"}, modules
    assert not [name for name in modules if "bench" in name], modules
