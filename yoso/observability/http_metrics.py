"""HTTP requests in /metrics: counted and timed by route, and those in flight.

The series are prometheus-fastapi-instrumentator's defaults, which HTTP dashboards expect:
`http_requests_total{handler, method, status}` and `http_request_duration_seconds{handler, method}`, the handler
being the route's template (`/v2/models/{model_name}/infer`, `none` where no route matches), found as that
library finds it. Its middleware is not used: per request it matched the path against every route and built a
request, a response and an info object (about 0.07 ms of the server process's CPU per image request, a twentieth
of the front's). Here the template is remembered per method and path, and so is each labelled child.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from yoso.observability.children import Children
from yoso.observability.deferred import Deferred
from yoso.observability.sent_status import StatusNotingSend

UNMATCHED = "none"  # the handler of a request no route matches
MAX_REMEMBERED = 1024  # paths whose template is remembered (a path with parameters is one entry per value)


class RouteTemplates:
    """The template of the route a request's path matches, remembered for the paths that match one."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], str] = {}

    def of(self, scope: Scope) -> str:
        key = (scope["method"], scope["path"], scope.get("root_path", ""))
        if (known := self._known.get(key)) is not None:
            return known
        template = get_route_name(HTTPConnection(scope), should_include_root_path=False)
        if template is None:
            return UNMATCHED  # not remembered: paths nobody serves must not push out those served
        if len(self._known) >= MAX_REMEMBERED:
            del self._known[next(iter(self._known))]  # the oldest
        self._known[key] = template
        return template


class HttpMetrics:
    """ASGI middleware: each request, `skip_paths` aside, counted, timed and in flight meanwhile."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry, in_flight: Gauge, buckets: tuple[float, ...],
                 deferred: Deferred, skip_paths: tuple[str, ...]) -> None:
        self.app = app
        self.deferred = deferred
        self.in_flight = in_flight
        self.skip_paths = skip_paths
        self.requests = Children(Counter("http_requests_total", "Total number of requests by method, status and "
                                         "handler.", ["handler", "method", "status"], registry=registry))
        self.seconds = Children(Histogram("http_request_duration_seconds", "Duration of HTTP requests in seconds",
                                          ["handler", "method"], buckets=buckets, registry=registry))
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        handler, method = self.templates.of(scope), scope["method"]  # before the router adds to the scope
        sent = StatusNotingSend(send)
        self.in_flight.inc()
        try:
            await self.app(scope, receive, sent)
        finally:
            self.in_flight.dec()
            self.deferred.call(self._record, handler, method, sent.status, time.perf_counter() - started)

    def _record(self, handler: str, method: str, status: int, seconds: float) -> None:
        self.requests(handler, method, str(status)).inc()
        self.seconds(handler, method).observe(seconds)
