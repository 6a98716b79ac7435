"""Logs go to stdout, one line per event, at YOSO_LOG_LEVEL: text for people, JSON lines for log pipelines.

Every request gets one access line (method, path, status, duration, and the trace id when the request is
traced) from AccessLogMiddleware, written within a moment of the request's end, with that time
(yoso.observability.deferred); uvicorn's own access log is off, so lines are never doubled. The
configuration is a dictConfig that uvicorn applies itself, so it also holds in the process uvicorn reloads
in dev mode. The level can change at run time (`set_log_level`, PUT /admin/log-level). Inference workers log
to stderr in the same format, with their pid (yoso.serving.worker).
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOG_LEVELS as UVICORN_LEVELS

from yoso.config import LogFormat, Settings, root_level
from yoso.logformat import TEXT_FORMAT, JsonFormatter, resolved_service_name
from yoso.observability.deferred import Deferred
from yoso.observability.sent_status import StatusNotingSend
from yoso.serving.admission import Ticket

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
UVICORN_LEVELLED_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")  # uvicorn sets their level itself

access_log = logging.getLogger("yoso.access")


def service_name(settings: Settings) -> str:
    """YOSO_SERVICE_NAME, unless the platform named the service (OTEL_SERVICE_NAME, or service.name in
    OTEL_RESOURCE_ATTRIBUTES): traces and JSON logs then carry the platform's name."""
    return resolved_service_name(settings.service_name)


def logging_config(settings: Settings) -> dict[str, Any]:
    """The dictConfig for yoso and uvicorn: everything through the root logger to stdout."""
    formatter = ({"()": f"{JsonFormatter.__module__}.JsonFormatter", "service": service_name(settings)}
                 if settings.log_format is LogFormat.json else {"format": TEXT_FORMAT})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"yoso": formatter},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "yoso"}},
        "root": {"level": root_level(settings.log_level), "handlers": ["stdout"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


def configure_logging(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings))


def set_log_level(level: str) -> None:
    """Log at `level` (a YOSO_LOG_LEVEL name) in this process from now on, as the start-up configuration and
    uvicorn (which sets its own loggers' level) would have."""
    logging.getLogger().setLevel(root_level(level))
    for name in UVICORN_LEVELLED_LOGGERS:
        logging.getLogger(name).setLevel(UVICORN_LEVELS[level])


def _printable(text: str) -> str:
    """Control characters escaped: a client's %0a must not start a line of its own in the log."""
    return text if text.isprintable() else repr(text)[1:-1]


def write_access_line(message: str, fields: dict[str, Any], created: float) -> None:
    """The access line of a request that ended at `created` (time.time()), whenever it is written."""
    record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, message, None, None, extra=fields)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0  # as LogRecord sets them
    access_log.handle(record)


class AccessLogMiddleware:
    """One line per request, its fields taken when the response is complete, written by `deferred`."""

    def __init__(self, app: ASGIApp, deferred: Deferred, skip_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.deferred = deferred
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        sent = StatusNotingSend(send)
        try:
            await self.app(scope, receive, sent)
        finally:
            if access_log.isEnabledFor(logging.INFO):  # the level when the request ends decides
                self._keep_line(scope, sent.status, started)

    def _keep_line(self, scope: Scope, status: int, started: float) -> None:
        fields: dict[str, Any] = {
            "method": scope["method"],
            "path": _printable(scope["path"]),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        message = "{method} {path} {status} {duration_ms} ms".format(**fields)
        ticket = scope.get(Ticket.SCOPE_KEY)
        if ticket is not None and ticket.version is not None:  # which model version answered
            fields["model"], fields["version"] = ticket.model, ticket.version
            message += f" model={ticket.model} version={ticket.version}"
        span = trace.get_current_span().get_span_context()
        if span.is_valid and span.trace_flags.sampled:  # a sampled-out request's id leads to no trace
            fields["trace_id"] = trace.format_trace_id(span.trace_id)
            message += f" trace_id={fields['trace_id']}"
        self.deferred.call(write_access_line, message, fields, time.time())
