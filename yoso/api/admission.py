"""Admission control at the HTTP edge: past capacity, answer 503 at once, before reading the upload.

Capacity is what the serving layer can hold without unbounded waiting: one batch per worker plus the
queue (Scheduler.capacity). A request over it costs the server almost nothing: no body read, no decode.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    """Two bounds, both answered with 503 before the upload is read.

    Requests whose upload has fully arrived (waiting for or in inference) stay within the serving capacity.
    Uploads still arriving are bounded apart, by `max_uploads`: a slow sender holds an upload place, never
    inference capacity, so a few clients trickling bytes cannot make the server refuse everyone else.
    """

    def __init__(self, app: ASGIApp, service: InferenceService, max_uploads: int) -> None:
        self.app = app
        self.service = service
        self.max_uploads = max_uploads
        self.uploading = 0
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.service.scheduler.admits(self.received) or self.uploading >= self.max_uploads:
            self.service.shed()
            await send({"type": "http.response.start", "status": 503, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
            return
        self.uploading += 1
        arrived = False

        async def receive_noting_arrival() -> Message:
            nonlocal arrived
            message = await receive()
            if not arrived and not message.get("more_body", False):
                arrived = True
                self.uploading -= 1
                self.received += 1
            return message

        try:
            await self.app(scope, receive_noting_arrival, send)
        finally:
            if arrived:
                self.received -= 1
            else:
                self.uploading -= 1
