"""RequestHeadLimit on its own: a whole head over the limit is refused from the scope, its body never read.

(On a real server the same heads may instead be refused by the HTTP protocol while still incomplete:
tests/test_hostile_inputs.py. Here the head is whole by construction, so this middleware must answer.)
"""

from __future__ import annotations

import asyncio
import json

import pytest

from yoso.api.head import REQUEST_HEAD_LIMIT_BYTES, RequestHeadLimit, request_head_bytes


def http_scope(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    return {"type": "http", "method": "POST", "path": "/count_objects", "raw_path": b"/count_objects",
            "query_string": query, "headers": headers or [(b"host", b"localhost")]}


def call(scope: dict) -> tuple[list[dict], bool]:
    """The messages sent and whether the wrapped app ran; receiving the body fails the test."""
    sent, ran = [], []

    async def app(scope, receive, send):
        ran.append(True)

    async def receive():
        pytest.fail("the body of a refused request was read")

    async def send(message):
        sent.append(message)

    asyncio.run(RequestHeadLimit(app)(scope, receive, send))
    return sent, bool(ran)


@pytest.mark.parametrize(("scope", "sent"), [
    (http_scope(b"model=yolov4-tiny", [(b"host", b"localhost"), (b"x-a", b"b")]),
     b"POST /count_objects?model=yolov4-tiny HTTP/1.1\r\nhost: localhost\r\nx-a: b\r\n\r\n"),
    (http_scope(), b"POST /count_objects HTTP/1.1\r\nhost: localhost\r\n\r\n"),
], ids=["with-query", "without-query"])
def test_the_head_size_is_counted_as_sent(scope, sent):
    assert request_head_bytes(scope) == len(sent)


def test_a_head_within_the_limit_reaches_the_app():
    sent, ran = call(http_scope(b"m" * (REQUEST_HEAD_LIMIT_BYTES - 200)))
    assert ran and sent == []


@pytest.mark.parametrize(("scope", "status"), [
    (http_scope(b"m" * (REQUEST_HEAD_LIMIT_BYTES + 1)), 414),
    (http_scope(b"m" * 9000, [(b"host", b"localhost"), (b"x-long", b"a" * 9000)]), 431),
    (http_scope(headers=[(b"x-%d" % i, b"a" * 100) for i in range(200)]), 431),
], ids=["long-target", "target-and-header-together", "many-headers"])
def test_a_head_over_the_limit_is_refused_with_json(scope, status):
    sent, ran = call(scope)
    assert not ran
    assert sent[0]["status"] == status
    assert str(REQUEST_HEAD_LIMIT_BYTES) in json.loads(sent[1]["body"])["detail"]


def test_other_connection_types_pass_untouched():
    sent, ran = call({"type": "lifespan"})
    assert ran and sent == []
