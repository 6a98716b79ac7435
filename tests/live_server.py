"""A real `python -m yoso.server` process on a free loopback port: for the tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    """`python -m yoso.server` in its own process, configured only through YOSO_ variables."""

    env: dict[str, str] = field(default_factory=dict)
    own_process_group: bool = False  # a session of its own, so that a signal can go to the whole group
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path, wait_ready: bool = True, timeout_s: float = 120) -> LiveServer:
        env = {**os.environ, "YOSO_HOST": "127.0.0.1", "YOSO_PORT": str(self.port), **self.env}
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "yoso.server"], cwd=ROOT, env=env,
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=self.own_process_group,
        )
        if wait_ready:
            self.wait_until("/readyz", timeout_s)
        return self

    def wait_until(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
