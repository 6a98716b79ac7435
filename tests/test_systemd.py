"""deploy/systemd/yoso.service runs `yoso serve` so that `systemctl stop` drains it, and `yoso serve --pid-file`
leaves a file that holds the server's pid exactly while it runs.

`systemd-analyze verify` checks the unit's syntax where it is installed (Debian: the `systemd` package);
elsewhere that test is skipped and the parsed checks below still run."""

from __future__ import annotations

import configparser
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, LiveServer
from yoso.config import Settings

UNIT = ROOT / "deploy" / "systemd" / "yoso.service"
INSTALLED_YOSO = "/opt/yoso/.venv/bin/yoso"  # the unit's placeholder for the yoso command


def service_section() -> configparser.SectionProxy:
    # strict=False: systemd allows a key more than once; optionxform=str: its keys are case-sensitive.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(UNIT.read_text())
    return unit["Service"]


def test_the_unit_runs_yoso_serve_with_a_pid_file_in_its_runtime_directory():
    service = service_section()
    command = shlex.split(service["ExecStart"])
    assert command[:2] == [INSTALLED_YOSO, "serve"]
    pid_file = Path(command[command.index("--pid-file") + 1])
    assert pid_file.parent == Path("/run") / service["RuntimeDirectory"]


def test_stop_drains_every_process_of_the_service_before_systemd_kills_it():
    service = service_section()
    assert service["KillSignal"] == "SIGTERM"
    assert service.get("KillMode", "control-group") == "control-group"  # workers finish their tasks, see the unit
    assert float(service["TimeoutStopSec"]) > Settings.model_fields["shutdown_grace_s"].default


def test_the_service_restarts_when_it_fails_not_when_it_is_stopped():
    assert service_section()["Restart"] == "on-failure"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing_wrong_in_the_unit(tmp_path):
    # verify insists that ExecStart's command exists: this checkout's stands in for the placeholder.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_YOSO, str(Path(sys.executable).parent / "yoso")))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    # Unknown keys are only warnings (exit 0); lines about other units of this machine are not ours.
    complaints = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


def yoso_serve(pid_file: Path) -> LiveServer:
    return LiveServer(env={"YOSO_PRELOAD_MODELS": "yolov3-tiny"},
                      arguments=["-m", "yoso", "serve", "--pid-file", str(pid_file)])


def test_the_pid_file_holds_the_server_pid_while_it_serves_and_is_gone_after_sigterm(model_store, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid_file = run_dir / "yoso.pid"
    live = yoso_serve(pid_file)
    try:
        live.start(tmp_path / "server.log")
        assert pid_file.read_text() == f"{live.process.pid}\n"
        assert live.stop(signal.SIGTERM) == 0, live.log()
        assert list(run_dir.iterdir()) == []  # neither the pid file nor a temporary one is left
    finally:
        live.stop(signal.SIGKILL)


def test_a_pid_file_another_process_took_over_is_left_alone(model_store, tmp_path):
    pid_file = tmp_path / "yoso.pid"
    live = yoso_serve(pid_file)
    try:
        live.start(tmp_path / "server.log")
        pid_file.write_text("1\n")  # a newer server's, say
        assert live.stop(signal.SIGTERM) == 0, live.log()
        assert pid_file.read_text() == "1\n"
    finally:
        live.stop(signal.SIGKILL)


def test_a_pid_file_that_cannot_be_written_stops_the_start_with_one_line(model_store, tmp_path):
    live = yoso_serve(tmp_path / "missing" / "yoso.pid")
    try:
        live.start(tmp_path / "server.log", wait_ready=False)
        assert live.process.wait(120) == 1
        assert live.log().strip().splitlines()[-1].startswith("yoso: cannot write the pid file ")
    finally:
        live.stop(signal.SIGKILL)
