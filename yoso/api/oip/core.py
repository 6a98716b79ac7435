"""The Open Inference Protocol (v2) apart from its transports: what the REST routes (rest.py) and the gRPC
service (grpc_server.py) both answer, from requests they have parsed into the dataclasses here.

Every failure is an ApiError (the HTTP status and a message); each transport renders it in its own shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from yoso import __version__
from yoso.api.errors import ApiError
from yoso.api.inference import run_admitted
from yoso.api.oip import signatures
from yoso.api.oip.tensors import TensorData
from yoso.contract import Tensor
from yoso.serving.admission import Ticket
from yoso.serving.catalog import Kind, ServedModel
from yoso.serving.service import InferenceService, UnknownModel

EXTENSIONS = ["binary_tensor_data"]
CONFIDENCE = "confidence"
DEFAULT_CONFIDENCE = 0.5


@dataclass
class InferRequest:
    model: str
    version: str
    id: str
    parameters: dict[str, Any]
    inputs: list[TensorData]
    outputs: list[str] | None  # the outputs asked for, by name; None: all


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[TensorData]


def server_metadata() -> dict[str, Any]:
    return {"name": "yoso", "version": __version__, "extensions": EXTENSIONS}


def served(service: InferenceService, name: str, version: str = "") -> ServedModel:
    """The model a request names; ApiError 404 for an unknown model, or a version that is not serving."""
    model = service.catalog.models.get(name)
    if model is None:
        raise ApiError(404, str(UnknownModel(name, list(service.catalog.models))))
    if version and version != str(model.entry.version):
        raise ApiError(404, f"Model {name!r} has no version {version!r} serving; version {model.entry.version} is.")
    return model


def tensors(model: ServedModel) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The model's input and output tensors."""
    if model.kind is Kind.detector:
        return (signatures.IMAGE,), signatures.DETECTOR_OUTPUTS
    outputs = tuple(model.cls.outputs) or (signatures.DEFAULT_OUTPUT,)
    return tuple(model.cls.inputs), outputs


def model_metadata(service: InferenceService, name: str, version: str = "") -> dict[str, Any]:
    model = served(service, name, version)
    inputs, outputs = tensors(model)
    return {"name": model.name, "versions": [str(model.entry.version)], "platform": f"yoso_{model.kind.value}",
            "inputs": [_described(tensor) for tensor in inputs], "outputs": [_described(tensor) for tensor in outputs]}


def _described(tensor: Tensor) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def model_ready(service: InferenceService, name: str, version: str = "") -> bool:
    model = served(service, name, version)
    return service.model_ready(model.name)


def confidence_of(parameters: dict[str, Any]) -> float:
    value = parameters.get(CONFIDENCE, DEFAULT_CONFIDENCE)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ApiError(400, f"The parameter {CONFIDENCE!r} is a number in (0, 1], not {value!r}.")
    return float(value)


async def model_infer(service: InferenceService, ticket: Ticket, request: InferRequest,
                      caller_gone: Callable[[], Awaitable[None]]) -> InferResponse:
    """Run an admitted request (its ticket) through its model: the outputs it asked for, in the model's order."""
    model = served(service, request.model, request.version)
    _, declared_outputs = tensors(model)
    known = [tensor.name for tensor in declared_outputs]
    unknown = [name for name in request.outputs or () if name not in known]
    if unknown:
        raise ApiError(400, f"Model {model.name!r} has no output {unknown[0]!r}; its outputs: {', '.join(known)}.")
    endpoint = "/v2/models/{name}/infer"
    if model.kind is Kind.detector:
        confidence = confidence_of(request.parameters)
        images = signatures.images_of(request.inputs, service.settings.max_images_per_request)
        outcomes = await run_admitted(service, ticket, model.kind, _arrived(images), caller_gone, endpoint,
                                      confidence)
        jobs = [job for job, _ in outcomes]
        for index, job in enumerate(jobs):
            if job.error is not None:  # one bad image fails the request: the protocol has no error per image
                status, detail = job.error
                raise ApiError(status, f"Image {index} of {signatures.IMAGE.name!r}: {detail}")
        outputs = signatures.detection_outputs(jobs, service.labels(model.name))
    else:
        instances = signatures.instances_of(request.inputs, model.cls.inputs)
        [(job, _)] = await run_admitted(service, ticket, model.kind, _arrived([instances]), caller_gone, endpoint)
        if job.error is not None:
            raise ApiError(*job.error)
        outputs = signatures.prediction_outputs(job.predictions or [], model.cls.outputs)
    if request.outputs is not None:
        outputs = [tensor for tensor in outputs if tensor.name in request.outputs]
    return InferResponse(model.name, str(ticket.version or model.entry.version), request.id, outputs)


def _arrived(inputs: list[Any]) -> Callable[[], Coroutine[Any, Any, list[Any]]]:
    """The inputs as run_admitted reads them: here they have arrived whole (the transport read the request)."""

    async def read() -> list[Any]:
        return inputs

    return read
