"""The Open Inference Protocol's REST API under /v2: health, metadata and inference, as Triton's and KServe's
clients call them, with the binary tensor data extension (tritonclient's default) and plain JSON.

A request with `Inference-Header-Content-Length: N` carries N bytes of JSON, then the binary data of each
input whose parameters name a `binary_data_size`, in order. Outputs come back binary when the request asks
(`binary_data` on an output, or `binary_data_output` for all), the same way round. Errors: `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from yoso.api.admission import ticket_of
from yoso.api.body import parse_json, read_body, size
from yoso.api.errors import OIP_PREFIX, ApiError
from yoso.api.inference import Service, caller_gone
from yoso.api.oip import core, schemas
from yoso.api.oip.tensors import TensorData, from_raw, from_values, to_json, to_raw

HEADER_LENGTH = "Inference-Header-Content-Length"
_DECOMPRESSORS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # what tritonclient may send
_JSON_MARGIN_BYTES = 64 * 1024  # the JSON around the tensors, beyond YOSO_MAX_UPLOAD_MB

router = APIRouter(prefix=OIP_PREFIX, tags=["Open Inference Protocol (v2)"])

_INFER_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "`confidence` (a detector's threshold, default 0.5); "
                                                        "`binary_data_output`: every output as binary data."},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}, "example": {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["<base64 of a JPEG>"]}]}}}}}


_READY = {400: {"model": schemas.Ready, "description": "Not ready: loading its models, or draining."}}
_MODEL_READY = {400: {"model": schemas.ModelReady, "description": "Not ready."}}
_INFER_200 = {200: {"description": "The outputs: JSON, or with binary outputs the JSON header and the tensors.",
                    "content": {"application/json": {}, "application/octet-stream": {}}}}
_INFER_ERRORS = schemas.errors(400, 401, 404, 408, 409, 413, 415, 422, 500, 503, 504)


@router.get("", summary="Server metadata", response_model=schemas.ServerMetadata, responses=schemas.errors(401))
async def server_metadata() -> dict[str, Any]:
    return core.server_metadata()


@router.get("/health/live", summary="Liveness: 200 while the process answers", response_model=schemas.Live)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: 200 once the models are loaded, 400 while not",
            response_model=schemas.Ready, responses=_READY)
async def ready(service: Service) -> JSONResponse:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 400)


@router.get("/models/{name}", summary="Model metadata: its tensors", response_model=schemas.ModelMetadata,
            responses=schemas.errors(401, 404))
@router.get("/models/{name}/versions/{version}", summary="Model metadata: its tensors",
            response_model=schemas.ModelMetadata, responses=schemas.errors(401, 404))
async def model_metadata(name: str, service: Service, version: str = "") -> dict[str, Any]:
    return core.model_metadata(service, name, version)


@router.get("/models/{name}/ready", summary="Model readiness: 200 when ready, 400 while not",
            response_model=schemas.ModelReady, responses=_MODEL_READY | schemas.errors(401, 404))
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness: 200 when ready, 400 while not",
            response_model=schemas.ModelReady, responses=_MODEL_READY | schemas.errors(401, 404))
async def model_ready(name: str, service: Service, version: str = "") -> JSONResponse:
    ready = core.model_ready(service, name, version)
    return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 400)


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=_INFER_DOC,
             response_class=Response, responses=_INFER_200 | _INFER_ERRORS)
@router.post("/models/{name}/versions/{version}/infer", summary="Inference", openapi_extra=_INFER_DOC,
             response_class=Response, responses=_INFER_200 | _INFER_ERRORS)
async def infer(name: str, request: Request, service: Service, version: str = "") -> Response:
    ticket = ticket_of(request.scope)
    try:
        async with asyncio.timeout(ticket.remaining_s()):  # a stalled upload must not hold its place
            body = await _body(request, service.settings.max_upload_bytes + _JSON_MARGIN_BYTES)
    except TimeoutError:
        raise ApiError(408, f"The upload took longer than {ticket.timeout_s:g} s to arrive.") from None
    # Parsed off the event loop: a JSON model's tensor may be millions of numbers.
    document, parsed = await asyncio.to_thread(_parsed, name, version, body, request.headers.get(HEADER_LENGTH))
    response = await core.model_infer(service, ticket, parsed, lambda: caller_gone(request))
    return _rendered(response, _binary_outputs(document))


def _parsed(name: str, version: str, body: bytes, header_length: str | None) -> tuple[dict[str, Any], core.InferRequest]:
    document, binary = _split(body, header_length)
    return document, _infer_request(name, version, document, binary)


async def _body(request: Request, limit: int) -> bytes:
    """The whole body, decompressed (gzip, deflate), never more than `limit` bytes of either."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", *_DECOMPRESSORS):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate.")
    body = await read_body(request, limit)
    if encoding == "identity":
        return body
    inflate = zlib.decompressobj(_DECOMPRESSORS[encoding])
    try:
        inflated = inflate.decompress(body, limit + 1)
    except zlib.error as error:
        raise ApiError(400, f"The body is not valid {encoding} data ({error}).") from None
    if len(inflated) > limit or inflate.unconsumed_tail:
        raise ApiError(413, f"The body is larger than the limit of {size(limit)} once decompressed.")
    return inflated


def _split(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON document of a request and the binary data after it."""
    length = len(body)
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ApiError(400, f"{HEADER_LENGTH} must be a byte count within the body's {len(body):,} bytes.")
        length = int(header_length)
    document = parse_json(body[:length], 400, "send an inference request: a JSON object with `inputs`")
    if not isinstance(document, dict):
        raise ApiError(400, "The inference request must be a JSON object with `inputs`.")
    return document, body[length:]


def _infer_request(name: str, version: str, document: dict[str, Any], binary: bytes) -> core.InferRequest:
    inputs, at = [], 0
    declared = document.get("inputs")
    if not isinstance(declared, list) or not declared:
        raise ApiError(400, "The inference request needs `inputs`: a list of tensors.")
    for tensor in declared:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ApiError(400, "Each input is an object with `name`, `datatype`, `shape` and `data`.")
        name_, datatype, shape = tensor["name"], tensor.get("datatype"), tensor.get("shape")
        parameters = _object(tensor.get("parameters"), f"The parameters of input {name_!r}")
        if not isinstance(datatype, str) or not isinstance(shape, list):
            raise ApiError(400, f"Input {name_!r} needs a `datatype` (text) and a `shape` (a list).")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or at + size > len(binary):
                raise ApiError(400, f"Input {name_!r}: binary_data_size {size!r} runs past the binary data.")
            values = from_raw(name_, datatype, shape, binary[at:at + size])
            at += size
        elif "data" in tensor:
            values = from_values(name_, datatype, shape, tensor["data"])
        else:
            raise ApiError(400, f"Input {name_!r} has neither `data` nor a binary_data_size.")
        inputs.append(TensorData(name_, datatype, shape, values, parameters))
    if at != len(binary):
        raise ApiError(400, f"{len(binary) - at:,} bytes of binary data follow the inputs that no input claims.")
    outputs = document.get("outputs")
    if outputs is not None and not (isinstance(outputs, list)
                                    and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise ApiError(400, "`outputs` is a list of objects, each with a `name`.")
    request_id = document.get("id", "")
    return core.InferRequest(name, version, request_id if isinstance(request_id, str) else str(request_id),
                             _object(document.get("parameters"), "The request's parameters"), inputs,
                             None if outputs is None else [output["name"] for output in outputs])


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object.")
    return value


def _binary_outputs(document: dict[str, Any]) -> dict[str, bool]:
    """Which outputs go back as binary data: by name, and under "" the default for the others."""
    default = _object(document.get("parameters"), "The request's parameters").get("binary_data_output") is True
    chosen = {"": default}
    for output in document.get("outputs") or ():
        parameters = _object(output.get("parameters"), f"The parameters of output {output['name']!r}")
        chosen[output["name"]] = parameters.get("binary_data", default) is True
    return chosen


def _rendered(response: core.InferResponse, binary: dict[str, bool]) -> Response:
    outputs, chunks = [], []
    for tensor in response.outputs:
        if binary.get(tensor.name, binary[""]):
            raw = to_raw(tensor)
            chunks.append(raw)
            outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape,
                            "parameters": {"binary_data_size": len(raw)}})
        else:
            outputs.append(to_json(tensor))
    document: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})
