"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`, so that tritonclient.grpc
calls yoso unchanged. It listens on YOSO_GRPC_PORT, in the app's event loop beside uvicorn (the lifespan starts
and drains it).

Each call is parsed into core's dataclasses and answered by core, as the REST routes are; an ApiError becomes
the gRPC status of its HTTP status, with its message. ModelInfer is admitted like an HTTP image request, its
gRPC deadline as its timeout. With YOSO_API_KEY set, every call but ServerLive and ServerReady (the probes)
needs a key in its metadata: `authorization: Bearer KEY` or `x-api-key: KEY`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc import aio

from yoso.api.errors import ApiError
from yoso.api.oip import core
from yoso.api.oip import inference_pb2 as pb
from yoso.api.oip import inference_pb2_grpc as pb_grpc
from yoso.api.oip.tensors import TensorData, check_datatype, from_raw, from_values, to_raw
from yoso.api.security import API_KEY_HEADER, Credentials, presented_credential
from yoso.config import Settings
from yoso.serving.admission import Refused
from yoso.serving.refusals import RETRY_AFTER_S
from yoso.serving.service import InferenceService

log = logging.getLogger(__name__)

OPEN_METHODS = frozenset({"ServerLive", "ServerReady"})  # probes: open without a key, as /healthz and /readyz
MESSAGE_MARGIN_BYTES = 1024 * 1024  # a request's names, shapes and parameters, beyond YOSO_MAX_UPLOAD_MB

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
          409: grpc.StatusCode.FAILED_PRECONDITION, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.INVALID_ARGUMENT,
          499: grpc.StatusCode.CANCELLED, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# Which typed field of InferTensorContents carries each datatype (FP16 and BF16 have none: raw contents only).
CONTENTS_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                   "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                   "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                   "FP64": "fp64_contents", "BYTES": "bytes_contents"}
_INT64_MAX = 2**63 - 1

Reply = TypeVar("Reply")


def status_code(status: int) -> grpc.StatusCode:
    """The gRPC status of an ApiError's HTTP status."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL)


def _answering(method: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[Reply]]:
    """An RPC whose ApiError ends the call with its gRPC status and message (and its headers, as trailing
    metadata: `retry-after` on UNAVAILABLE); anything unexpected is logged and answered INTERNAL."""

    @functools.wraps(method)
    async def answer(self: InferenceServicer, request: Any, context: aio.ServicerContext) -> Reply:
        try:
            return await method(self, request, context)
        except ApiError as error:
            trailing = tuple((name.lower(), value) for name, value in (error.headers or {}).items())
            await context.abort(status_code(error.status), error.detail, trailing)
        except aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "The server failed unexpectedly; the error has been logged.")
        raise AssertionError("context.abort always raises")

    return answer


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs of the protocol's health, metadata and inference, on top of core and the service."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    @_answering
    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=core.model_ready(self.service, request.name, request.version))

    @_answering
    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**core.server_metadata())

    @_answering
    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: aio.ServicerContext) -> pb.ModelMetadataResponse:
        metadata = core.model_metadata(self.service, request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
            inputs=[tensor(**spec) for spec in metadata["inputs"]],
            outputs=[tensor(**spec) for spec in metadata["outputs"]])

    @_answering
    async def ModelInfer(self, request: pb.ModelInferRequest, context: aio.ServicerContext) -> pb.ModelInferResponse:
        admission = self.service.admission
        try:
            ticket = admission.enter(request.model_name, context.time_remaining())
        except Refused as refusal:
            self.service.shed(refusal.reason)
            await admission.hold_refusal()
            raise ApiError(503, refusal.detail, {"Retry-After": str(RETRY_AFTER_S)}) from None
        try:
            parsed = await asyncio.to_thread(infer_request, request)  # off the loop: tensors may be large
        finally:
            ticket.upload_done()  # the message arrived whole before the call began
        # grpc.aio cancels this task when the client cancels or its deadline passes: the inference is dropped then.
        response = await core.model_infer(self.service, ticket, parsed, lambda: asyncio.Event().wait())
        return infer_response(response)


def infer_request(message: pb.ModelInferRequest) -> core.InferRequest:
    """The protocol's request: inputs from raw_input_contents (tritonclient's way) or typed contents."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise ApiError(400, f"The request has {len(message.inputs)} inputs and {len(raw)} raw_input_contents; "
                            "send one raw content per input, in order, or typed contents for all.")
    inputs = []
    for index, tensor in enumerate(message.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise ApiError(400, f"Input {name!r} has typed contents beside raw_input_contents; send one kind.")
            values = from_raw(name, datatype, shape, raw[index])
        else:
            check_datatype(name, datatype)
            field = CONTENTS_FIELDS.get(datatype)
            if field is None:
                raise ApiError(400, f"Input {name!r}: {datatype} has no typed contents; send it in raw_input_contents.")
            values = from_values(name, datatype, shape, list(getattr(tensor.contents, field)))
        inputs.append(TensorData(name, datatype, shape, values, parameters(tensor.parameters)))
    outputs = [output.name for output in message.outputs] or None
    return core.InferRequest(message.model_name, message.model_version, message.id, parameters(message.parameters),
                             inputs, outputs)


def infer_response(response: core.InferResponse) -> pb.ModelInferResponse:
    """The answer, each output's data in raw_output_contents as Triton sends it."""
    tensor = pb.ModelInferResponse.InferOutputTensor
    return pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id,
        outputs=[tensor(name=output.name, datatype=output.datatype, shape=output.shape,
                        parameters=_messages(output.parameters)) for output in response.outputs],
        raw_output_contents=[to_raw(output) for output in response.outputs])


def parameters(message: Any) -> dict[str, Any]:
    """A map of InferParameter as Python values (an unset parameter is left out)."""
    values = {}
    for key, parameter in message.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _messages(values: dict[str, Any]) -> dict[str, pb.InferParameter]:
    return {key: _parameter(value) for key, value in values.items()}


def _parameter(value: Any) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(**{"int64_param" if value <= _INT64_MAX else "uint64_param": value})
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


class KeyCheck(aio.ServerInterceptor):
    """UNAUTHENTICATED, before the message is even parsed, for a call without one of YOSO_API_KEY (probes aside)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = Credentials(keys)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.rpartition("/")[2] in OPEN_METHODS:
            return handler  # a method that does not exist is UNIMPLEMENTED, whoever calls it
        metadata = [(key.encode(), value if isinstance(value, bytes) else value.encode())
                    for key, value in details.invocation_metadata or ()]
        presented = presented_credential(metadata)
        if presented is not None and self.keys.accept(presented):
            return handler
        detail = (f"This call needs an API key: send it as `authorization: Bearer KEY` or "
                  f"`{API_KEY_HEADER.lower()}: KEY` metadata." if presented is None
                  else "The credential sent is not an API key; check the key and send it again.")

        async def refuse(request: bytes, context: aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

        return grpc.unary_unary_rpc_method_handler(refuse)  # no deserializer: the message stays bytes


class GrpcPortError(RuntimeError):
    """The gRPC port cannot be bound: the server stops with this one line."""


async def start_grpc_server(settings: Settings, service: InferenceService,
                            interceptors: Sequence[aio.ServerInterceptor] = ()) -> aio.Server:
    """Listen on YOSO_HOST:YOSO_GRPC_PORT; stop it with `await server.stop(grace_s)` (in-flight calls finish).
    `interceptors` (observability) come first, so that calls refused for their key are counted and traced too."""
    chain = [*interceptors, *([KeyCheck(settings.api_key)] if settings.api_key else [])]
    # Calls beyond the uploads and queue admission may hold are refused (RESOURCE_EXHAUSTED) before their
    # message is read: gRPC reads each message whole, so this bounds the memory of calls not yet admitted.
    server = aio.server(interceptors=chain, maximum_concurrent_rpcs=settings.max_uploads + settings.queue_limit,
                        options=[
        ("grpc.max_receive_message_length", settings.max_upload_bytes + MESSAGE_MARGIN_BYTES),
        ("grpc.so_reuseport", 0),  # a port in use is an error, as for HTTP, not a port shared with another server
    ])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError:
        raise GrpcPortError(f"cannot listen for gRPC on {address}: is the port in use? Set YOSO_GRPC_PORT "
                            "(0 turns gRPC off).") from None
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
