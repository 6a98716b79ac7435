"""Metrics, traces and access logs, attached to the app from outside by `install_observability`."""

from __future__ import annotations

from fastapi import FastAPI

from yoso.config import METRICS_PATH, Settings
from yoso.observability.deferred import Deferred
from yoso.observability.logging import AccessLogMiddleware
from yoso.observability.metrics import install_metrics
from yoso.serving.service import InferenceService

QUIET_PATHS = (METRICS_PATH,)  # scraped every few seconds: kept out of metrics, traces and access logs


def install_observability(app: FastAPI, settings: Settings, service: InferenceService) -> Deferred:
    """Call last in create_app, so that requests refused by earlier middleware are logged and counted too.
    Returns what writes the access lines and records the metrics: close it as the app stops."""
    bookkeeping = Deferred()
    if settings.prometheus_metrics:
        install_metrics(app, service, bookkeeping, skip_paths=QUIET_PATHS)
    app.add_middleware(AccessLogMiddleware, deferred=bookkeeping, skip_paths=QUIET_PATHS)
    if settings.otel_instrument:
        from yoso.observability.tracing import install_tracing  # the SDK and an exporter, only when tracing

        install_tracing(app, settings, service, skip_paths=QUIET_PATHS)
    return bookkeeping
