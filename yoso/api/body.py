"""A request body read whole into memory, within a limit: refused on its Content-Length first, then on the bytes
that actually arrive, never holding more than the limit. For JSON bodies; uploads stream through upload.py."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from yoso.api.errors import ApiError


def size(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MB" if count >= 1024 * 1024 else f"{count:,} bytes"


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body; 413 past `max_bytes`, 499 if the client leaves before it is complete."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"The body is {int(declared):,} bytes; the limit is {size(max_bytes)}.")
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > max_bytes:
                raise ApiError(413, f"The body is larger than the limit of {size(max_bytes)}.")
            body += chunk
    except ClientDisconnect:
        raise ApiError(499, "The client closed the connection before the body was complete.") from None
    return bytes(body)


def parse_json(body: bytes, status: int, what_to_send: str) -> Any:
    """The body's JSON document; else `status` with a message that ends saying what to send."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(status, f"The body is not JSON ({error}); {what_to_send}.") from None
    except RecursionError:
        raise ApiError(status, f"The body's JSON is nested too deeply; {what_to_send}.") from None


async def read_json(request: Request, max_bytes: int, what_to_send: str) -> Any:
    """The JSON document of the body, within `max_bytes`; 422 when it is not JSON."""
    return parse_json(await read_body(request, max_bytes), 422, what_to_send)
