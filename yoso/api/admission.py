"""Admission control at the HTTP edge: past capacity, answer 503 at once, before reading the upload.

Capacity is what the serving layer can hold without unbounded waiting: one batch per worker plus the
queue (Scheduler.capacity). A request over it costs the server almost nothing: no body read, no decode.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from yoso.serving.service import InferenceService

INFERENCE_PATHS = frozenset({"/predict", "/count_objects", "/detect"})
RETRY_AFTER_S = 1
_BODY = json.dumps({"detail": "The server is at capacity; retry after the Retry-After delay."}).encode()
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", str(RETRY_AFTER_S).encode()),
]


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, service: InferenceService) -> None:
        self.app = app
        self.service = service
        self.admitted = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.service.scheduler.capacity:
            self.service.shed()
            await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1
