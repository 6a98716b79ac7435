"""One request through inference, for every route that runs a model: admitted at the edge (its ticket) ->
the model exists and can load -> its input arrives -> queued and run -> its answer, or the error that says
why not. Dropped if the client leaves or the request's time runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request

from yoso.api.admission import ticket_of
from yoso.api.errors import ApiError
from yoso.serving.admission import Refused, Ticket
from yoso.serving.catalog import Kind
from yoso.serving.pool import TaskOverran, WorkerCrashed
from yoso.serving.refusals import RETRY_AFTER_S
from yoso.serving.service import InferenceService, ModelNotInstalled, UnknownModel
from yoso.serving.tasks import JobOutcome, TaskOutcome

_WHERE = {Kind.detector: "/detect, /count_objects or /predict with an image",
          Kind.json: "POST /v1/models/{name}:predict with JSON instances, or /v2/models/{name}/infer"}


async def get_service(request: Request) -> InferenceService:
    return request.app.state.service  # async: FastAPI would run a plain function in a thread pool


Service = Annotated[InferenceService, Depends(get_service)]


async def until_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (call once its body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def infer(request: Request, service: InferenceService, endpoint: str, kind: Kind,
                read_input: Callable[[], Awaitable[bytes | list[Any]]], confidence: float = 0.0,
                annotate: bool = False) -> tuple[JobOutcome, TaskOutcome]:
    """The outcome of the request's one input (an image for a detector, instances for a JSON model) and of the
    task it ran in; ApiError otherwise."""

    async def read_inputs() -> list[bytes | list[Any]]:
        return [await read_input()]

    [(job, task)] = await infer_many(request, service, endpoint, kind, read_inputs, confidence, annotate)
    if job.error is not None:
        raise ApiError(*job.error)
    return job, task


async def infer_many(request: Request, service: InferenceService, endpoint: str, kind: Kind,
                     read_inputs: Callable[[], Awaitable[Sequence[bytes | list[Any]]]], confidence: float = 0.0,
                     annotate: bool = False) -> list[tuple[JobOutcome, TaskOutcome]]:
    """The outcomes of an HTTP request's inputs, in order (an input the model could not take carries its
    error); ApiError when the request as a whole fails."""
    return await run_admitted(service, ticket_of(request.scope), kind, read_inputs,
                              lambda: until_disconnected(request), endpoint, confidence, annotate)


async def run_admitted(service: InferenceService, ticket: Ticket, kind: Kind,
                       read_inputs: Callable[[], Awaitable[Sequence[bytes | list[Any]]]],
                       caller_gone: Callable[[], Coroutine[Any, Any, None]], endpoint: str, confidence: float = 0.0,
                       annotate: bool = False) -> list[tuple[JobOutcome, TaskOutcome]]:
    """An admitted request, whatever its transport. `caller_gone()`, watched once the inputs have arrived,
    returns when the caller stops waiting."""
    try:
        await service.ensure_installed(ticket.model)
    except UnknownModel as error:
        raise ApiError(404, str(error)) from None
    except ModelNotInstalled as error:
        raise ApiError(409, str(error)) from None
    served = service.catalog.models[ticket.model]
    if served.kind != kind:
        where = _WHERE[served.kind].format(name=served.name)
        raise ApiError(422, f"Model {served.name!r} is a {served.kind.value} model ({served.entry.target}): "
                            f"use {where}.")
    timeout_s = ticket.timeout_s  # one bound, upload included: the caller's or the server's
    try:
        async with asyncio.timeout(ticket.remaining_s()):  # a stalled upload must not hold its place
            inputs = await read_inputs()
    except TimeoutError:
        raise ApiError(408, f"The upload took longer than {timeout_s:g} s to arrive.") from None
    inference = asyncio.ensure_future(service.run(ticket, inputs, endpoint, confidence, annotate))
    gone = asyncio.ensure_future(caller_gone())
    try:
        done, _ = await asyncio.wait({inference, gone}, timeout=ticket.remaining_s(),
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the transport gave up on the request (a gRPC call cancelled)
        inference.cancel()
        raise
    finally:
        gone.cancel()
    if inference not in done:
        inference.cancel()  # a queued job is skipped; a running one finishes and is discarded
        if gone in done:
            raise ApiError(499, "The client closed the connection.")
        raise ApiError(504, f"The request took longer than {timeout_s:g} s.")
    if isinstance(refusal := inference.exception(), Refused):  # other uploads arrived: it may no longer wait
        reason, detail = refusal.reason, refusal.detail
        del inputs, inference, done, refusal  # a held refusal keeps no upload in memory (its traceback held one)
        service.shed(reason)
        await service.admission.hold_refusal(ticket.client)
        raise ApiError(503, detail, {"Retry-After": str(RETRY_AFTER_S)})
    try:
        outcomes = inference.result()
    except WorkerCrashed as error:
        raise ApiError(500, f"{error}; the input was not processed. A new worker is starting.") from None
    except TaskOverran as error:
        raise ApiError(504, f"The request took longer than {timeout_s:g} s: {error}.") from None
    ticket.version = outcomes[-1][1].version
    return outcomes
