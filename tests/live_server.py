"""A real `python -m yoso.server` process on a free loopback port: for the tests and the benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def poll_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """True as soon as `check()` is, False once `timeout_s` has passed without it: the tests' one polling loop
    (`tests.support.eventually` and `LiveServer.wait_until` are this), for conditions that live in another
    process (its HTTP endpoints, its log file, its metrics, its children) and are announced to no one."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        # A sleep because nothing can be waited on: the condition changes in another process, which signals
        # this one nothing (a poll every 50 ms costs little and the timeout only costs time on failure).
        time.sleep(interval_s)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    """`python -m yoso.server` in its own process, configured only through YOSO_ variables (or other
    `arguments`: `["-m", "yoso", "serve", "--pid-file", path]` runs the `yoso serve` command)."""

    env: dict[str, str] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=lambda: ["-m", "yoso.server"])  # after the interpreter's path
    own_process_group: bool = False  # a session of its own, so that a signal can go to the whole group
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_path: Path, wait_ready: bool = True, timeout_s: float = 120) -> LiveServer:
        # gRPC off unless a test asks for it (on a free port): two servers would both take the default, 8001
        env = {**os.environ, "YOSO_HOST": "127.0.0.1", "YOSO_PORT": str(self.port), "YOSO_GRPC_PORT": "0", **self.env}
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, *self.arguments], cwd=ROOT, env=env,
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=self.own_process_group,
        )
        if wait_ready:
            self.wait_until("/readyz", timeout_s)
        return self

    def wait_until(self, path: str, timeout_s: float) -> None:
        def answers_200() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + path, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        if not poll_until(answers_200, timeout_s):
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
