"""`python -m yoso.server`: settings -> uvicorn, with a graceful drain on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import uvicorn

from yoso.api.http_protocol import BoundedHeadHttpToolsProtocol
from yoso.app import create_app
from yoso.config import Settings, load_settings, precision_in_use
from yoso.observability.logging import configure_logging, logging_config
from yoso.serving.service import InferenceService

log = logging.getLogger("yoso.server")


class DrainingServer(uvicorn.Server):
    """On SIGTERM: report not-ready, stop accepting, finish in-flight requests, then exit 0."""

    def __init__(self, config: uvicorn.Config, service: InferenceService) -> None:
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit and self.service.start_error is None:
            log.info("%s: draining; in-flight requests finish within %gs", signal.Signals(sig).name,
                     self.config.timeout_graceful_shutdown)
        self.service.drain()
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutdown; a completed drain is a clean exit.
            # _captured_signals is private: uvicorn is pinned (requirements.txt), and an upgrade that changes
            # it fails tests/test_serving.py::test_sigterm_drains_every_accepted_request_then_exits_0.
            self._captured_signals.clear()


def serve(settings: Settings, pid_file: str | Path | None = None) -> None:
    configure_logging(settings)
    precision, why_not = precision_in_use(settings)
    if why_not is not None:
        log.warning("YOSO_INFERENCE_PRECISION=%s: %s; running %s", settings.inference_precision.value, why_not,
                    precision.value)
    # uvicorn applies log_config again in the process it reloads (dev mode); yoso writes the access lines.
    # reset_contextvars: each request starts from an empty context, not the one of the previous request on
    # its keep-alive connection (which would nest its trace under that request's span; CPython #140947).
    # httptools, with a bound on an unfinished request head (yoso/api/http_protocol.py; a whole head over the same
    # bound: RequestHeadLimit).
    common = dict(host=settings.host, port=settings.port, http=BoundedHeadHttpToolsProtocol,
                  log_config=logging_config(settings), access_log=False, reset_contextvars=True,
                  log_level=settings.log_level, timeout_graceful_shutdown=settings.shutdown_grace_s)
    if settings.dev_mode:
        with _pid_written(pid_file):
            uvicorn.run("yoso.app:create_app", factory=True, reload=True, reload_dirs=["yoso"], **common)
        return
    app = create_app(settings)
    service: InferenceService = app.state.service
    _require_models(service)
    with _pid_written(pid_file):
        DrainingServer(uvicorn.Config(app, **common), service).run()
    if service.start_error is not None:
        raise SystemExit(f"yoso: {service.start_error}")


def _require_models(service: InferenceService) -> None:
    """The preload and default models must be installed: say so in one line, before listening."""
    try:
        service.require_configured()
    except LookupError as error:
        raise SystemExit(f"yoso: {error}") from None


@contextmanager
def _pid_written(pid_file: str | Path | None) -> Iterator[None]:
    """For scripts and supervisors that find the server by file (systemd tracks it without one). A reader sees
    a whole pid or no file; on exit the file goes, unless a newer server has written its own pid there."""
    if pid_file is None:
        yield
        return
    path, pid = Path(pid_file), str(os.getpid())
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            file.write(pid + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise SystemExit(f"yoso: cannot write the pid file {path}: {error.strerror or error}; "
                         "is its directory there and writable?") from None
    try:
        yield
    finally:
        try:
            if path.read_text().strip() == pid:
                path.unlink()
        except FileNotFoundError:
            pass


def main() -> None:
    serve(load_settings())


if __name__ == "__main__":
    main()
