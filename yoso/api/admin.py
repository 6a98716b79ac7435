"""For operators: the log level, changed at run time without a restart, the work in flight, and a model's
repository read again now (a new version swapped in, or refused).

Guarded like every other path: with YOSO_API_KEY set, each needs a key (yoso.api.security).
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError, field_validator

from yoso.api.errors import ApiError, ErrorResponse
from yoso.config import LOG_LEVELS
from yoso.api.inference import Service
from yoso.observability.logging import set_log_level
from yoso.serving.service import UnknownModel

log = logging.getLogger(__name__)

Level = Literal[LOG_LEVELS]  # type: ignore[valid-type] - YOSO_LOG_LEVEL's names

router = APIRouter(prefix="/admin", tags=["admin"])
_ERRORS = {401: {"model": ErrorResponse, "description": "Missing or wrong API key."}}


class LogLevelBody(BaseModel):
    level: Level = Field(description="The new level, in any case.", examples=["debug"])

    @field_validator("level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class LogLevelResponse(BaseModel):
    level: Level = Field(description="What the server and its workers log at: YOSO_LOG_LEVEL, or the level last set.")


class TaskEntry(BaseModel):
    model: str
    stage: Literal["queued", "running"] = Field(
        description="queued: one request waiting for a worker; running: one task (a batch of requests) on a worker.")
    age_s: float = Field(description="Seconds since the request was queued, or since the task reached its worker.")
    requests: int | None = Field(None, description="Running: the requests batched in the task.")
    worker_pid: int | None = Field(None, description="Running: the worker process's id.")


class TasksResponse(BaseModel):
    tasks: list[TaskEntry] = Field(description="Oldest first.")


class ReloadResponse(BaseModel):
    model: str
    version: int = Field(description="The version serving now.")
    previous: int = Field(description="The version serving before (the same when nothing changed).")
    refused: str | None = Field(None, description="Why a newer version was refused, if one was.")


@router.get("/log-level", response_model=LogLevelResponse, summary="The log level", responses=_ERRORS)
async def get_log_level(service: Service):
    return LogLevelResponse(level=service.log_level)


_BODY_DOC = {"required": True, "content": {"application/json": {"schema": LogLevelBody.model_json_schema()}}}


@router.put("/log-level", response_model=LogLevelResponse, summary="Change the log level, at once, everywhere",
            openapi_extra={"requestBody": _BODY_DOC},
            responses=_ERRORS | {422: {"model": ErrorResponse, "description": "Not a JSON object with a log level."}})
async def put_log_level(request: Request, service: Service):
    """In the server process at once; in each worker between two tasks (a busy one after its task), and in
    every worker started later. Until the next restart, which goes back to YOSO_LOG_LEVEL."""
    try:  # read here, not by FastAPI, which answers a body that is not UTF-8 with a 400
        body = LogLevelBody.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None
    log.warning("log level: %s, was %s (PUT /admin/log-level)", body.level, service.log_level)
    set_log_level(body.level)
    service.set_log_level(body.level)
    return LogLevelResponse(level=body.level)


@router.get("/tasks", response_model=TasksResponse, summary="The work in flight: queued and running",
            responses=_ERRORS)
async def tasks(service: Service):
    now = time.monotonic()
    running = [TaskEntry(model=task.kind[0], stage="running", age_s=round(now - task.started, 3), requests=task.kind[2],
                         worker_pid=pid) for pid, task in service.pool.tasks().items()]
    queued = [TaskEntry(model=job.model, stage="queued", age_s=round(now - job.enqueued, 3))
              for job in service.scheduler.queued()]
    return TasksResponse(tasks=sorted(running + queued, key=lambda entry: -entry.age_s))


@router.post("/models/{name}/reload", response_model=ReloadResponse, summary="Read a model's repository now",
             responses=_ERRORS | {404: {"model": ErrorResponse, "description": "Unknown model."}})
async def reload_model(name: str, service: Service):
    """The version that should serve (the highest complete one, or the pinned one) is loaded and warmed in every
    worker, then swapped in with no failed request; a version that cannot load is refused and says why."""
    try:
        checked = await service.reload(name)
    except UnknownModel as error:
        raise ApiError(404, str(error)) from None
    return ReloadResponse(model=checked.model, version=checked.version, previous=checked.previous,
                          refused=checked.refused)
