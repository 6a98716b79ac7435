"""What a log line looks like, in the server process and in the inference workers alike: text for people, one
JSON object for log pipelines, and the service name that JSON lines (and traces) carry.

Light on purpose: a worker formats its lines with this and nothing of the server's web stack.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"  # with the worker's pid
ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "trace_id")


def resolved_service_name(configured: str) -> str:
    """`configured` (YOSO_SERVICE_NAME), unless the platform named the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector  # the SDK, only when asked

    return str(OTELResourceDetector().detect().attributes.get(SERVICE_NAME, configured))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, and the access fields when present.

    `service` lets a log pipeline that collects many services tell yoso's lines apart (and join them to the
    traces, which carry the same name). `pid` adds the process id: the inference workers' lines have it.
    """

    def __init__(self, service: str, pid: bool = False) -> None:
        super().__init__()
        self.service = service
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.pid:
            line["pid"] = record.process
        line.update({field: getattr(record, field) for field in ACCESS_FIELDS if hasattr(record, field)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
