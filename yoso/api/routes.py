"""Thin handlers: read the upload, check it, hand it to the inference service, shape the answer."""

from __future__ import annotations

import asyncio
import html
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from yoso.api.admission import TIMEOUT_HEADER, ticket_of
from yoso.api.errors import ApiError, ErrorResponse
from yoso.api.images import IMAGES_BODY_DOC, ONE_IMAGE_BODY_DOC, ImageBody
from yoso.api.inference import Service, infer, infer_many
from yoso.api.schemas import (CountResponse, CountResults, DetectionOut, DetectResponse, DetectResults, HealthResponse,
                              ImageError, ModelsResponse)
from yoso.serving.catalog import Kind
from yoso.serving.service import InferenceService
from yoso.serving.tasks import JobOutcome, TaskOutcome


# Validated and documented here; admission reads it from the query string at the edge, before the body, and the
# request's ticket carries it to the handler.
ModelName = Annotated[str | None, Query(max_length=64, description="Model to run (default: YOSO_DEFAULT_MODEL).")]
Confidence = Annotated[
    float, Query(gt=0, le=1, allow_inf_nan=False, description="Keep detections scoring above this, in (0, 1].")
]

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "Missing or wrong API key.",
        404: "Unknown model.",
        409: "Model known but not installed.",
        413: "Upload or image too large.",
        415: "Not a supported image format.",
        422: f"Bad parameter or {TIMEOUT_HEADER}, missing field, bad base64, too many images or unreadable image.",
        500: "Inference failed.",
        503: "Refused at once: it would wait past its budget, too many wait or upload, or the server is starting "
             "or draining; retry after Retry-After seconds.",
        408: f"The upload took longer than the request's timeout ({TIMEOUT_HEADER} or YOSO_REQUEST_TIMEOUT_S).",
        504: f"The request took longer than its timeout ({TIMEOUT_HEADER} or YOSO_REQUEST_TIMEOUT_S).",
    }.items()
}
_TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER, "in": "header", "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "How long the caller waits, in milliseconds (default and upper bound: YOSO_REQUEST_TIMEOUT_S). "
                   "A request that cannot be answered in time is refused at once (503); one that runs out of "
                   "time is answered 504.",
}
_UPLOAD = {"openapi_extra": {"requestBody": IMAGES_BODY_DOC, "parameters": [_TIMEOUT_PARAMETER]}, "responses": _ERRORS}

COUNTS_HEADER = "X-Yoso-Counts"

router = APIRouter()


async def _detect_each(request: Request, service: InferenceService, confidence: float, endpoint: str,
                       answer: Callable[[JobOutcome, TaskOutcome], BaseModel],
                       results: type[DetectResults | CountResults]) -> BaseModel:
    """Each image of the request through a detector: one image's `answer`, or the `results` of several, where
    an image the model could not take is an ImageError and the others are answered all the same.

    The worker checks the image header before decoding: a header crafted to be slow to parse costs one
    worker's time, never the event loop's, and the server process does no image work at all.
    """
    images = ImageBody(request, service.settings)
    outcomes = await infer_many(request, service, endpoint, Kind.detector, images.read, confidence)
    if images.several:
        return results(results=[answer(job, task) if job.error is None
                                else ImageError(status=job.error[0], detail=job.error[1]) for job, task in outcomes])
    [(job, task)] = outcomes
    if job.error is not None:
        raise ApiError(*job.error)
    return answer(job, task)


_PREDICT_200 = {
    "description": "The image as JPEG with boxes, labels and confidence drawn.",
    "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {COUNTS_HEADER: {"description": 'Objects drawn, per label, as JSON: {"car": 2}.',
                                "schema": {"type": "string"}}},
}


async def predict_image(request: Request, service: InferenceService, confidence: float) -> Response:
    images = ImageBody(request, service.settings)
    image, _ = await infer(request, service, "/predict", Kind.detector, images.read_one, confidence, annotate=True)
    counts = json.dumps(_counts(image), separators=(",", ":"))
    return Response(image.jpeg, media_type="image/jpeg", headers={COUNTS_HEADER: counts})


async def count_objects_in(request: Request, service: InferenceService, confidence: float) -> BaseModel:
    return await _detect_each(request, service, confidence, "/count_objects",
                              lambda image, _: CountResponse(items=_counts(image)), CountResults)


def _counts(image: JobOutcome) -> dict[str, int]:
    return dict(Counter(detection.label for detection in image.detections))


async def detections_in(request: Request, service: InferenceService, confidence: float) -> BaseModel:
    def answer(image: JobOutcome, task: TaskOutcome) -> DetectResponse:
        return DetectResponse(
            model=ticket_of(request.scope).model,
            confidence=confidence,
            width=image.width,
            height=image.height,
            detections=[DetectionOut(label=d.label, confidence=d.confidence, box=list(d.box))
                        for d in image.detections],
            inference_ms=task.inference_ms,
        )

    return await _detect_each(request, service, confidence, "/detect", answer, DetectResults)


# What each image route answers, given its request and its confidence: the FastAPI routes below and the image
# lane (yoso/api/image_lane.py) both answer through these.
IMAGE_ANSWERS: dict[str, Callable[[Request, InferenceService, float], Awaitable[Response | BaseModel]]] = {
    "/predict": predict_image, "/count_objects": count_objects_in, "/detect": detections_in,
}


@router.post("/predict", response_class=Response, summary="The image with boxes, labels and confidence drawn",
             openapi_extra={"requestBody": ONE_IMAGE_BODY_DOC, "parameters": [_TIMEOUT_PARAMETER]},
             responses=_ERRORS | {200: _PREDICT_200})
async def predict(request: Request, service: Service, model: ModelName = None, confidence: Confidence = 0.5):
    return await predict_image(request, service, confidence)


@router.post("/count_objects", response_model=CountResponse | CountResults, summary="How many objects of each label",
             **_UPLOAD)
async def count_objects(request: Request, service: Service, model: ModelName = None, confidence: Confidence = 0.5):
    return await count_objects_in(request, service, confidence)


@router.post("/detect", response_model=DetectResponse | DetectResults, summary="Detections as JSON", **_UPLOAD)
async def detect(request: Request, service: Service, model: ModelName = None, confidence: Confidence = 0.5):
    return await detections_in(request, service, confidence)


@router.get("/models", response_model=ModelsResponse, summary="Known models, installed and loaded")
async def models(service: Service):
    statuses = await asyncio.to_thread(service.models)
    return ModelsResponse(default=service.catalog.default, models=statuses)


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz():
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, summary="Readiness: models loaded and warmed",
            responses={503: {"model": HealthResponse}})
async def readyz(service: Service):
    if service.ready:
        return HealthResponse(status="ready")
    return JSONResponse({"status": "draining" if service.draining else "starting"}, status_code=503)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(service: Service):
    title = html.escape(service.settings.title)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1><p>Object detection, and any model you bring, over HTTP.</p>
<ul><li><a href="/docs">/docs</a>: try the API</li><li><a href="/redoc">/redoc</a>: reference</li>
<li><a href="/models">/models</a>: the models served</li></ul></body></html>"""
