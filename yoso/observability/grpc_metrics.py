"""gRPC calls observed as HTTP requests are: counted and timed in /metrics, one server span each when tracing is
on, one access line each. An interceptor, attached from outside (the app's lifespan), like the HTTP middleware.

The metrics follow the names of go-grpc-prometheus, which gRPC dashboards expect:
`grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and `grpc_server_handling_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from fastapi import FastAPI
from grpc import aio
from opentelemetry import trace
from opentelemetry.propagate import extract
from prometheus_client import CollectorRegistry, Counter, Histogram

from yoso.config import Settings
from yoso.observability.logging import access_log
from yoso.observability.metrics import REQUEST_SECONDS_BUCKETS
from yoso.serving.service import InferenceService

# The codes that make a server span an error (OpenTelemetry's semantic conventions for gRPC servers).
ERROR_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                         grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})


class GrpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "grpc_server_handled_total", "gRPC calls answered, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"], registry=registry)
        self.seconds = Histogram(
            "grpc_server_handling_seconds", "Time to answer a gRPC call, by method.", ["grpc_service", "grpc_method"],
            buckets=REQUEST_SECONDS_BUCKETS, registry=registry)


class CallObserver(aio.ServerInterceptor):
    """Wraps each unary call: its status code, its time, its span (the current span while it runs)."""

    def __init__(self, metrics: GrpcMetrics | None, tracer: trace.Tracer | None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        call = handler.unary_unary
        service, _, method = details.method.lstrip("/").rpartition("/")
        metadata = {key: value for key, value in details.invocation_metadata or () if isinstance(value, str)}

        async def observed(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            span = self._span(service, method, metadata)
            with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
                try:
                    response = await call(request, context)
                    code = grpc.StatusCode.OK
                    return response
                except asyncio.CancelledError:  # grpc.aio cancels the call's task: the client left or timed out
                    remaining = context.time_remaining()
                    code = (grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0
                            else grpc.StatusCode.CANCELLED)
                    raise
                except BaseException:
                    code = context.code() or grpc.StatusCode.UNKNOWN  # set by context.abort
                    raise
                finally:
                    self._finish(span, code, context)
                    self._record(service, method, code, time.perf_counter() - started, span)

        return grpc.unary_unary_rpc_method_handler(observed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _span(self, service: str, method: str, metadata: dict[str, str]) -> trace.Span:
        if self.tracer is None:
            return trace.INVALID_SPAN
        return self.tracer.start_span(
            f"{service}/{method}", context=extract(metadata), kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method})

    @staticmethod
    def _finish(span: trace.Span, code: grpc.StatusCode, context: aio.ServicerContext) -> None:
        if not span.is_recording():
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in ERROR_CODES:
            details = context.details() if code is not grpc.StatusCode.CANCELLED else None
            span.set_status(trace.StatusCode.ERROR, details if isinstance(details, str) else code.name)

    def _record(self, service: str, method: str, code: grpc.StatusCode, seconds: float, span: trace.Span) -> None:
        if self.metrics is not None:
            self.metrics.handled.labels(service, method, code.name).inc()
            self.metrics.seconds.labels(service, method).observe(seconds)
        fields: dict[str, Any] = {"method": "gRPC", "path": f"/{service}/{method}", "status": code.name,
                                  "duration_ms": round(seconds * 1000, 1)}
        message = "{method} {path} {status} {duration_ms} ms".format(**fields)
        context = span.get_span_context()
        if context.is_valid and context.trace_flags.sampled:
            fields["trace_id"] = trace.format_trace_id(context.trace_id)
            message += f" trace_id={fields['trace_id']}"
        access_log.info(message, extra=fields)


def app_tracer(service: InferenceService) -> trace.Tracer | None:
    """The tracer of the app's own provider (yoso.observability.tracing), which the service's observer holds."""
    from yoso.observability.tracing import TracingObserver  # the SDK: only when tracing is on

    return next((observer.tracer for observer in service.observers if isinstance(observer, TracingObserver)), None)


def call_observers(app: FastAPI, settings: Settings, service: InferenceService) -> list[aio.ServerInterceptor]:
    """The interceptors that observe gRPC calls as install_observability observes HTTP requests."""
    registry: CollectorRegistry | None = getattr(app.state, "metrics_registry", None)  # when metrics are on
    metrics = GrpcMetrics(registry) if registry is not None else None
    tracer = app_tracer(service) if settings.otel_instrument else None
    return [CallObserver(metrics, tracer)]
