"""Who may call the server: API keys, a separate token for /metrics, and CORS for browsers.

The key check is a pure ASGI middleware so that a request without a valid key is answered 401 from its
headers alone: the body of an unauthenticated upload is never read. Every presented credential is
compared with every configured one in constant time, and neither is ever logged.

Which credential a path needs:
  - /healthz, /readyz (and the Open Inference Protocol's /v2/health/*) and the API's own documentation (/, /docs, /redoc, /openapi.json): none. Probes
    must work without secrets, and a browser cannot attach a header to a page it navigates to.
  - /metrics: YOSO_METRICS_TOKEN when set (API keys do not open it); otherwise an API key when keys are set.
  - everything else: one of YOSO_API_KEY when set.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from yoso.api.admission import TIMEOUT_HEADER
from yoso.api.errors import error_response
from yoso.api.routes import COUNTS_HEADER
from yoso.config import METRICS_PATH, Settings

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs",
                        "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
API_KEY_HEADER = "X-API-Key"
CORS_ALLOWED_HEADERS = ("Authorization", API_KEY_HEADER, "Content-Type", TIMEOUT_HEADER)
CORS_EXPOSED_HEADERS = ("Retry-After", "WWW-Authenticate", COUNTS_HEADER)


def _digest(secret: bytes) -> bytes:
    # Hashing first makes the comparison independent of the secrets' lengths as well as their contents.
    return hashlib.sha256(secret).digest()


class Credentials:
    """A set of accepted secrets, checked without an early exit on the first match or mismatch."""

    def __init__(self, secrets: Sequence[str]) -> None:
        self._digests = [_digest(secret.encode()) for secret in secrets]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accept(self, presented: bytes) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def presented_credential(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The secret from `Authorization: Bearer ...` or, failing that, `X-API-Key: ...` (first of each)."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization" and bearer is None:
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and api_key is None and value.strip():
            api_key = value.strip()
    return bearer if bearer is not None else api_key


class AccessPolicy:
    """Which credential each path needs (see the module docstring)."""

    def __init__(self, api_keys: Sequence[str], metrics_token: str | None) -> None:
        self.api_keys = Credentials(api_keys)
        self.metrics_token = Credentials([metrics_token]) if metrics_token else None

    def required(self, path: str) -> tuple[Credentials, str] | None:
        """What opens `path` and how to name it in a refusal; None when the path is open."""
        path = path.rstrip("/") or "/"
        if path in OPEN_PATHS:
            return None
        if path == METRICS_PATH and self.metrics_token is not None:
            return self.metrics_token, "the metrics token (YOSO_METRICS_TOKEN)"
        if self.api_keys:
            return self.api_keys, "an API key"
        return None


class AccessControl:
    """ASGI middleware: 401 with `WWW-Authenticate: Bearer` unless the path's credential is presented."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        need = self.policy.required(scope["path"]) if scope["type"] == "http" else None
        if need is None:
            await self.app(scope, receive, send)
            return
        credentials, name = need
        presented = presented_credential(scope["headers"])
        if presented is not None and credentials.accept(presented):
            await self.app(scope, receive, send)
            return
        if presented is None:
            detail = f"This endpoint needs {name}: send it as `Authorization: Bearer KEY` or `{API_KEY_HEADER}: KEY`."
            challenge = "Bearer"
        else:
            detail = f"The credential sent is not {name}; check the key and send it again."
            challenge = 'Bearer error="invalid_token"'
        await error_response(401, detail, {"WWW-Authenticate": challenge}, scope["path"])(scope, receive, send)


def _document_security(app: FastAPI, policy: AccessPolicy) -> None:
    """Declare the schemes in OpenAPI, so /docs shows an Authorize button and every guarded operation a 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update({
            "BearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
            "APIKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        })
        components.setdefault("schemas", {}).setdefault("ErrorResponse", {
            "type": "object", "title": "ErrorResponse", "required": ["detail"],
            "properties": {"detail": {"type": "string", "title": "Detail"}},
        })
        unauthorized = {
            "description": "Missing or wrong API key.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        }
        for path, operations in schema.get("paths", {}).items():
            if policy.required(path) is None:
                continue
            for operation in operations.values():
                operation["security"] = [{"BearerAuth": []}, {"APIKeyHeader": []}]
                operation.setdefault("responses", {}).setdefault("401", unauthorized)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_security(app: FastAPI, settings: Settings) -> None:
    """Key checks when keys or a metrics token are set, CORS when origins are. CORS wraps the key check, so
    that preflight requests (which carry no credentials) are answered and refusals stay readable by browsers."""
    if settings.api_key or settings.metrics_token:
        policy = AccessPolicy(settings.api_key, settings.metrics_token)
        app.add_middleware(AccessControl, policy=policy)
        _document_security(app, policy)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_ALLOWED_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
        )
