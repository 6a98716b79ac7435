"""One request through inference, for every route that runs a model: admitted at the edge (its ticket) ->
the model exists and can load -> its input arrives -> queued and run -> its answer, or the error that says
why not. Dropped if the client leaves or the request's time runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request

from yoso.api.admission import ticket_of
from yoso.api.errors import ApiError
from yoso.api.http_protocol import CONNECTION_CLOSED
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


async def _until_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (call once its body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def caller_gone(request: Request) -> Awaitable[None]:
    """Done when the client closes the connection (call once its body has been read): the connection's future
    where yoso's HTTP protocol serves the request, else a coroutine that reads the request's messages."""
    closed = request.scope.get(CONNECTION_CLOSED)
    return closed if closed is not None else _until_disconnected(request)


class CallerLeft(Exception):
    """The caller stopped waiting while the request was queued or running."""


@contextmanager
def cancelled_once_done(gone: asyncio.Future[Any]) -> Iterator[None]:
    """Inside, the current task is cancelled once `gone` is done, and that cancellation leaves as CallerLeft."""
    task = asyncio.current_task()
    assert task is not None
    inside, cancelled = True, False

    def cancel(_: asyncio.Future[Any]) -> None:
        nonlocal cancelled
        if inside:  # a callback already scheduled as the block ended must not cancel what comes after it
            cancelled = True
            task.cancel()

    gone.add_done_callback(cancel)
    try:
        yield
    except asyncio.CancelledError:
        if cancelled and task.uncancel() == 0:  # this block's cancellation only, not the transport's
            raise CallerLeft from None
        raise
    finally:
        inside = False
        gone.remove_done_callback(cancel)


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
    return await run_admitted(service, ticket_of(request.scope), kind, read_inputs, lambda: caller_gone(request),
                              endpoint, confidence, annotate)


async def run_admitted(service: InferenceService, ticket: Ticket, kind: Kind,
                       read_inputs: Callable[[], Awaitable[Sequence[bytes | list[Any]]]],
                       gone: Callable[[], Awaitable[None]], endpoint: str, confidence: float = 0.0,
                       annotate: bool = False) -> list[tuple[JobOutcome, TaskOutcome]]:
    """An admitted request, whatever its transport. `gone()`, watched once the inputs have arrived, is done
    when the caller stops waiting. The request waits in the caller's own task: no task of its own."""
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
    watched = gone()
    left = asyncio.ensure_future(watched)  # a coroutine runs as a task until the answer; a future is watched as is
    refused = None
    try:
        with cancelled_once_done(left):
            async with asyncio.timeout(ticket.remaining_s()):  # a queued job is skipped; a running one is discarded
                outcomes = await service.run(ticket, inputs, endpoint, confidence, annotate)
    except TimeoutError:
        raise ApiError(504, f"The request took longer than {timeout_s:g} s.") from None
    except CallerLeft:
        raise ApiError(499, "The client closed the connection.") from None
    except Refused as refusal:  # other uploads arrived: it may no longer wait
        refused = refusal.reason, refusal.detail
    except WorkerCrashed as error:
        raise ApiError(500, f"{error}; the input was not processed. A new worker is starting.") from None
    except TaskOverran as error:
        raise ApiError(504, f"The request took longer than {timeout_s:g} s: {error}.") from None
    finally:
        if left is not watched:
            left.cancel()
    if refused is not None:
        del inputs  # a held refusal keeps no upload in memory
        service.shed(refused[0])
        await service.admission.hold_refusal(ticket.client)
        raise ApiError(503, refused[1], {"Retry-After": str(RETRY_AFTER_S)})
    ticket.version = outcomes[-1][1].version
    return outcomes
