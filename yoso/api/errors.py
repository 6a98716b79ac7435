"""One error shape for every failure: `{"detail": "what went wrong and what to do"}`; under /v2 (the Open
Inference Protocol), the protocol's own: `{"error": "..."}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match


class ErrorResponse(BaseModel):
    detail: str


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


OIP_PREFIX = "/v2"


def error_response(status: int, detail: str, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    """The error as JSON, in the shape of the API `path` belongs to."""
    protocol = path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")
    return JSONResponse({"error" if protocol else "detail": detail}, status_code=status, headers=headers)


def _describe(error: RequestValidationError) -> str:
    problems = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"] if part not in ("query", "body"))
        problems.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(problems)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes on this path."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error.status, error.detail, error.headers, request.url.path)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        headers = error.headers
        if error.status_code == 405:  # Starlette names the methods of one route; a path may have several
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(error.status_code, str(error.detail), headers, request.url.path)

    async def validation_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(422, _describe(error), path=request.url.path)

    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(500, "The server failed unexpectedly; the error has been logged.", path=request.url.path)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)
