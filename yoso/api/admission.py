"""Admission at the HTTP edge: the policy (yoso.serving.admission) applied before a byte of the upload is read.

A refused request costs the server almost nothing: no body read, no decode; past a rate of refusals it is
held its turn before the 503 goes out, so that clients resending at once cannot take the cores from the
workers. An admitted request carries its ticket (`ticket_of`) to the route.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from yoso.api.errors import error_response
from yoso.serving.admission import Admission, Reason, Refused, Ticket
from yoso.serving.refusals import RETRY_AFTER_S

INFERENCE_PATHS = frozenset({"/predict", "/count_objects", "/detect"})  # the model named in the query string
KSERVE_PREDICT = re.compile(r"/v1/models/([^/]+):predict")  # the model named in the path (KServe V1) ...
OIP_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")  # ... and the Open Inference Protocol's
TIMEOUT_HEADER = "X-Yoso-Timeout-Ms"
_TIMEOUT_HEADER_KEY = TIMEOUT_HEADER.lower().encode()


class BadTimeout(ValueError):
    """The timeout header is not a positive number of milliseconds: a 422."""


def client_timeout_s(scope: Scope) -> float | None:
    """The caller's own timeout, from `X-Yoso-Timeout-Ms` (a positive number of milliseconds), if sent."""
    for name, value in scope["headers"]:
        if name == _TIMEOUT_HEADER_KEY:
            try:
                milliseconds = float(value)
            except ValueError:
                milliseconds = math.nan
            if not 0 < milliseconds < math.inf:
                raise BadTimeout(f"{TIMEOUT_HEADER} must be a positive number of milliseconds, "
                                 f"not {value.decode(errors='replace')[:32]!r}.")
            return milliseconds / 1000
    return None


def requested_model(scope: Scope, default: str) -> str | None:
    """The model an inference request names as its route reads it (in the path for KServe V1 and the Open
    Inference Protocol, else the last `model` query parameter, else the default); None for any other request."""
    path = scope["path"]
    if path not in INFERENCE_PATHS:
        named = KSERVE_PREDICT.fullmatch(path) or OIP_INFER.fullmatch(path)
        return named.group(1) if named else None
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("model")
    return values[-1] if values else default


def ticket_of(scope: Scope) -> Ticket:
    return scope[Ticket.SCOPE_KEY]


def refusal_response(refusal: Refused, path: str) -> JSONResponse:
    return error_response(503, refusal.detail, {"Retry-After": str(RETRY_AFTER_S)}, path)


class AdmissionMiddleware:
    """Admits or refuses each image request from its head: a ticket for the route, or a (paced) 503 or a 422."""

    def __init__(self, app: ASGIApp, admission: Admission, default_model: str,
                 on_refused: Callable[[Reason], None]) -> None:
        self.app = app
        self.admission = admission
        self.default_model = default_model
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = requested_model(scope, self.default_model) if scope["type"] == "http" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        client = tuple(scope["client"]) if scope.get("client") else None  # (host, port): its connection
        try:
            ticket = self.admission.enter(model, client_timeout_s(scope), client)
        except BadTimeout as error:
            await error_response(422, str(error), path=scope["path"])(scope, receive, send)
            return
        except Refused as refusal:
            self.on_refused(refusal.reason)
            await self.admission.hold_refusal(client)
            await refusal_response(refusal, scope["path"])(scope, receive, send)
            return
        scope[Ticket.SCOPE_KEY] = ticket

        async def receive_noting_arrival() -> Message:
            message = await receive()
            if not message.get("more_body", False):
                ticket.upload_done()
            return message

        try:
            await self.app(scope, receive_noting_arrival, send)
        finally:
            ticket.upload_done()
