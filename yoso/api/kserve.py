"""KServe's V1 protocol for JSON models (yoso.Model): `POST /v1/models/{name}:predict` with
`{"instances": [...]}` answers `{"predictions": [...]}`, one prediction per instance, in order; also
`GET /v1/models` and `GET /v1/models/{name}` (readiness). Errors keep yoso's shape: `{"detail": "..."}`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.convertors import StringConvertor, register_url_convertor

from yoso.api.body import read_json
from yoso.api.errors import ApiError, ErrorResponse
from yoso.api.inference import Service, infer
from yoso.serving.catalog import Kind
from yoso.serving.service import UnknownModel



class ModelNameConvertor(StringConvertor):
    """A model name stops at a colon, so that `/v1/models/{name}:predict` is never read as a model called
    `name:predict` (a GET there is then 405, as on any path that only takes POST). Names hold no colon."""

    regex = "[^/:]+"


register_url_convertor("model_name", ModelNameConvertor())
router = APIRouter(prefix="/v1/models", tags=["KServe V1"])

_BODY_DOC = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "minItems": 1, "items": {},
                                     "description": "The inputs, one per prediction."}},
    }, "example": {"instances": [[1, 2], [3, 4]]}}},
}
_ERRORS = {status: {"model": ErrorResponse} for status in (401, 404, 408, 409, 413, 422, 500, 503, 504)}


class V1Models(BaseModel):
    models: list[str]


class V1ModelStatus(BaseModel):
    name: str
    ready: bool


class V1Predictions(BaseModel):
    predictions: list[Any] = Field(description="One per instance, in order.")


async def read_instances(request: Request, max_bytes: int) -> list[Any]:
    """The `instances` of a JSON body (`inputs` is accepted too, as KServe does); 413 past `max_bytes`."""
    document = await read_json(request, max_bytes, 'send {"instances": [...]}')
    instances = document.get("instances", document.get("inputs")) if isinstance(document, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ApiError(422, 'Send a JSON object {"instances": [...]} with at least one instance.')
    return instances


@router.get("", response_model=V1Models, summary="The models served")
async def list_models(service: Service):
    return V1Models(models=list(service.catalog.models))


@router.get("/{name:model_name}", response_model=V1ModelStatus, summary="Whether a model is ready", responses=_ERRORS)
async def model_status(name: str, service: Service):
    if name not in service.catalog.models:
        raise ApiError(404, str(UnknownModel(name, list(service.catalog.models))))
    return V1ModelStatus(name=name, ready=service.model_ready(name))


@router.post("/{name:model_name}:predict", response_model=V1Predictions,
             summary="Predictions of a JSON model (yoso.Model)",
             openapi_extra={"requestBody": _BODY_DOC}, responses=_ERRORS)
async def predict(name: str, request: Request, service: Service):
    job, _ = await infer(request, service, "/v1/models/{name}:predict", Kind.json,
                         lambda: read_instances(request, service.settings.max_upload_bytes))
    return V1Predictions(predictions=job.predictions or [])
