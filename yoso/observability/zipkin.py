"""The Zipkin exporter, imported only when YOSO_OTEL_INSTRUMENT_EXPORTER=zipkin."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import requests
from opentelemetry.exporter.zipkin import json as zipkin
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

log = logging.getLogger(__name__)


class ZipkinExporter(zipkin.ZipkinExporter):
    """Zipkin's exporter, with a one-line warning instead of a traceback when the server cannot be reached."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return super().export(spans)
        except requests.RequestException as error:
            log.warning("could not send %d spans to Zipkin at %s: %s", len(spans), self.endpoint, error)
            return SpanExportResult.FAILURE
