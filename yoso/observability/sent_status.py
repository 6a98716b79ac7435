"""The status a request was answered with, noted as the response goes out: what access logs and metrics record."""

from __future__ import annotations

from starlette.types import Message, Send


class StatusNotingSend:
    """An ASGI `send` that passes every message on and notes the response's status in `status`: 500, what the
    client gets, until the app answers (if it raises first)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)
