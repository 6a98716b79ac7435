"""A real `mlflow server` on a free loopback port, for the registry tests: a SQLite backend and an artifact store
(served over HTTP, as a shared server would) in a directory of the test's, in a process group of its own so that
its workers go down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.live_server import free_port, poll_until


@dataclass
class MlflowServer:
    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> MlflowServer:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                   "--artifacts-destination", (self.root / "artifacts").as_uri()]
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self.log_path.open("wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
        if not poll_until(self._healthy, timeout_s):
            raise TimeoutError(f"mlflow server not healthy after {timeout_s}s:\n{self.log()}")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 20) -> None:
        """The whole group, the server and its workers, gone (killed if they take over `timeout_s`)."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        if not poll_until(lambda: self.process.poll() is not None and not self._signal_group(0), timeout_s):
            self._signal_group(signal.SIGKILL)
        self.process.wait()

    def _signal_group(self, number: int) -> bool:
        """False when no process is left in the group."""
        try:
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            return False
        return True


def mlflow_serving(root: Path) -> Iterator[MlflowServer]:
    """The body of a fixture: `yield from mlflow_serving(tmp_path_factory.mktemp("mlflow"))`."""
    server = MlflowServer(root).start()
    try:
        yield server
    finally:
        server.stop()
