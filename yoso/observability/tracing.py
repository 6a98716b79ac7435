"""OpenTelemetry traces: one server span per request, with the worker's stages as child spans.

FastAPI's instrumentation opens the server span. The wait for a worker (queue) is timed by the scheduler;
decoding, inference and annotate+encode ran in a worker process, which reports their time.time_ns()
intervals; the TracingObserver turns them all into child spans after the fact. It is called inside the
request's handler, so the current span is the request's.

Spans leave through a BatchSpanProcessor: a background thread exports them, so a slow or absent collector
costs a request nothing (spans are dropped when its queue is full). Exporters: console (one JSON line per
span on stdout), zipkin (Zipkin v2 JSON; OpenTelemetry deprecated it in December 2025) and otlp (OTLP over
HTTP, configured by the standard OTEL_EXPORTER_OTLP_* variables; the long-term path).
"""

from __future__ import annotations

import logging
import os
import re

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.util.types import Attributes

from yoso import __version__
from yoso.config import Settings, TraceExporter
from yoso.observability.logging import service_name
from yoso.serving.admission import Reason
from yoso.serving.pool import Exit
from yoso.serving.service import InferenceService
from yoso.serving.tasks import Interval, JobOutcome, TaskOutcome

log = logging.getLogger(__name__)


def span_exporter(settings: Settings) -> SpanExporter:
    """The chosen exporter, imported only when chosen: a start-up loads no exporter it will not use."""
    exporter = settings.otel_instrument_exporter
    if exporter is TraceExporter.zipkin:
        from yoso.observability.zipkin import ZipkinExporter

        return ZipkinExporter(endpoint=settings.zipkin_endpoint)
    if exporter is TraceExporter.otlp:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout, compression: the OTEL_EXPORTER_OTLP_* variables
    return ConsoleSpanExporter(formatter=_one_line)


def service_resource(settings: Settings) -> Resource:
    return Resource.create({SERVICE_NAME: service_name(settings), SERVICE_VERSION: __version__})


def tracer_provider(settings: Settings) -> TracerProvider:
    """A provider of the app's own (not the global one), sampling parent-based at YOSO_OTEL_SAMPLING_RATIO."""
    provider = TracerProvider(
        resource=service_resource(settings),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sampling_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter(settings)))
    return provider


class TracingObserver:
    """An InferenceObserver that adds the decode, inference and encode spans under the request's span."""

    def __init__(self, tracer: trace.Tracer, runtimes: dict[str, tuple[str, str]]) -> None:
        self.tracer = tracer
        self.runtimes = runtimes  # each model's (engine, precision)

    def image_done(self, model: str, endpoint: str, confidence: float, image: JobOutcome,
                   task: TaskOutcome) -> None:
        if not trace.get_current_span().is_recording():
            return  # the request was sampled out
        self._stage("queue", image.queue)
        self._stage("decode", image.decode)
        attributes = {
            **self._model_attributes(model, task),
            "yoso.confidence": confidence,
            "yoso.image.width": image.width,
            "yoso.image.height": image.height,
            "yoso.detections": len(image.detections),
            "yoso.batch_size": len(task.jobs),
        }
        self._model_steps(task, attributes)
        self._stage("encode", image.encode)

    def predictions_done(self, model: str, endpoint: str, confidence: float, job: JobOutcome,
                         task: TaskOutcome) -> None:
        if not trace.get_current_span().is_recording():
            return
        self._stage("queue", job.queue)
        self._model_steps(task, {**self._model_attributes(model, task), "yoso.instances": len(job.predictions or ()),
                                 "yoso.batch_size": len(task.jobs)})

    def _model_attributes(self, model: str, task: TaskOutcome) -> dict[str, str | int]:
        engine, precision = self.runtimes.get(model, ("", ""))
        return {"yoso.model": model, "yoso.model.version": task.version, "yoso.model.engine": engine,
                "yoso.model.precision": precision}

    def _model_steps(self, task: TaskOutcome, attributes: Attributes) -> None:
        """An `inference` span for the model's whole run on the batch, with a child span per step of its class
        (preprocess, predict, postprocess)."""
        if task.inference is None:
            return
        inference = self.tracer.start_span("inference", start_time=task.inference[0], attributes=attributes)
        with trace.use_span(inference, end_on_exit=False):
            for step, interval in task.stages:
                self._stage(step, interval)
        inference.end(end_time=task.inference[1])

    def task_done(self, model: str, task: TaskOutcome) -> None:
        """A task is shared by the requests of its batch; each request's span gets its inference in image_done."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """Model loads happen outside requests; metrics record them."""

    def request_shed(self, reason: Reason) -> None:
        trace.get_current_span().add_event("yoso.shed", {"yoso.reason": reason.value})

    def worker_replaced(self, reason: Exit) -> None:
        """Replacements happen outside requests; metrics count them."""

    def _stage(self, name: str, interval: Interval | None, attributes: Attributes = None) -> None:
        if interval is None:
            return
        span = self.tracer.start_span(name, start_time=interval[0], attributes=attributes)
        span.end(end_time=interval[1])


def install_tracing(app: FastAPI, settings: Settings, service: InferenceService, skip_paths: tuple[str, ...]) -> None:
    provider = tracer_provider(settings)
    service.observers.append(TracingObserver(provider.get_tracer(__name__, __version__), service.catalog.runtimes()))
    excluded = ",".join(rf"^[a-z]+://[^/]+{re.escape(path)}$" for path in skip_paths)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=excluded,
                                       exclude_spans=["receive", "send"])
    destination = {
        TraceExporter.zipkin: f" to {settings.zipkin_endpoint}",
        TraceExporter.otlp: " to the OTEL_EXPORTER_OTLP_* endpoint (default http://localhost:4318)",
    }.get(settings.otel_instrument_exporter, " to stdout")
    log.info("tracing: %s exporter%s, sampling %g%% of new traces", settings.otel_instrument_exporter.value,
             destination, 100 * settings.otel_sampling_ratio)


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + os.linesep
