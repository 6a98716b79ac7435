"""The cheapest HTTP front there is, for `python -m bench.ceiling`: uvicorn as yoso runs it (httptools, uvloop),
with an app that reads each upload in full, then answers `POST /after/{seconds}` that many seconds later with a
small JSON body. No model, no admission, no queue: what is left is HTTP itself.

`python -m bench.bare_app PORT` serves it on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from starlette.types import Receive, Scope, Send

from yoso.api.http_protocol import BoundedHeadHttpToolsProtocol

ANSWER = b'{"items": {}}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    more_body = True
    while more_body:  # the upload, read as a server reads it; then dropped
        message = await receive()
        more_body = message.get("more_body", False)
    head, _, seconds = scope["path"].rpartition("/")
    try:
        delay = float(seconds)
    except ValueError:
        delay = -1.0
    if head != "/after" or not 0 <= delay <= 60:
        await _answer(send, 404, b'{"detail": "POST /after/{seconds}"}')
        return
    await asyncio.sleep(delay)
    await _answer(send, 200, ANSWER)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=BoundedHeadHttpToolsProtocol, access_log=False,
                lifespan="off", log_level="warning")
