"""One bound on the request head, however its bytes arrive.

The HTTP protocol (yoso/api/http_protocol.py) refuses a head still incomplete past `REQUEST_HEAD_LIMIT_BYTES`
(400, plain text), but a longer head that happens to arrive in one read is parsed whole. This middleware refuses that
one too, from the head alone (the body is never read): 414 when the request target is what is too long,
431 otherwise. So whether a long head is served never depends on how the network split it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from yoso.api.errors import error_response

REQUEST_HEAD_LIMIT_BYTES = 16 * 1024  # also uvicorn's bound on an incomplete head (yoso/server.py)
_REQUEST_LINE_EXTRA = len("  HTTP/1.1\r\n")
_HEADER_LINE_EXTRA = len(": \r\n")


def request_target_bytes(scope: Scope) -> int:
    """Path and query as sent ("/count_objects?model=yolov4-tiny")."""
    query = scope.get("query_string", b"")
    return len(scope.get("raw_path") or scope["path"].encode()) + (len(query) + 1 if query else 0)


def request_head_bytes(scope: Scope) -> int:
    """The size of the head as sent: request line, header lines, blank line."""
    headers = sum(len(name) + len(value) + _HEADER_LINE_EXTRA for name, value in scope["headers"])
    return len(scope["method"]) + request_target_bytes(scope) + _REQUEST_LINE_EXTRA + headers + 2


class RequestHeadLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or request_head_bytes(scope) <= REQUEST_HEAD_LIMIT_BYTES:
            await self.app(scope, receive, send)
            return
        if request_target_bytes(scope) > REQUEST_HEAD_LIMIT_BYTES:
            response = error_response(414, f"The request target is longer than {REQUEST_HEAD_LIMIT_BYTES} bytes.",
                                      path=scope["path"])
        else:
            response = error_response(431, f"The request head is larger than {REQUEST_HEAD_LIMIT_BYTES} bytes.",
                                      path=scope["path"])
        await response(scope, receive, send)
