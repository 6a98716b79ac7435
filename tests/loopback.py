"""Loopback stand-ins for the server behaviours a real yoso cannot produce on demand.

A real overload (503 + Retry-After) or a server still loading its models depends on timing, and a
server that accepts a connection but never answers is not something yoso does at all; the client's
handling of them is tested against these, on 127.0.0.1 only. Everything else runs against a real server.
No Zipkin server or OpenTelemetry collector can be installed here either: SpanReceiver stands in for both.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class LoopbackHTTP:
    """An HTTP server on 127.0.0.1, answering with `handler` in a thread of its own from construction on."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


class ScriptedServer:
    """An HTTP/1.1 server answering request n with replies[n] (the last reply once the script runs out)."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.received: list[Received] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                scripted.received.append(Received(self.command, self.path, headers))
                reply = scripted.replies[min(len(scripted.received), len(scripted.replies)) - 1]
                body = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose port accepts connections (the kernel completes them from the backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@dataclass(frozen=True)
class Post:
    path: str
    headers: dict[str, str]
    body: bytes


class SpanReceiver(LoopbackHTTP):
    """A loopback stand-in for a Zipkin server or an OTLP/HTTP collector: keeps every POST it gets."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.posts.append(Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202 if self.path.startswith("/api/v2") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        super().__init__(Handler)

    def zipkin_spans(self) -> list[dict]:
        return [span for post in self.posts for span in json.loads(post.body)]

    def otlp_requests(self) -> list[ExportTraceServiceRequest]:
        requests = []
        for post in self.posts:
            request = ExportTraceServiceRequest()
            request.ParseFromString(post.body)
            requests.append(request)
        return requests
