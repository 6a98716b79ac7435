"""Tensors of the Open Inference Protocol, in plain Python (the server process loads no NumPy).

A tensor travels as a flat, row-major list of values (JSON `data`, gRPC typed contents) or as raw bytes (the
binary extension, gRPC `raw_*_contents`): little-endian elements, and for BYTES each element prefixed by its
length as a 4-byte little-endian integer. Every mismatch of datatype, shape and data is a 400.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from yoso.api.errors import ApiError

FORMATS = {"BOOL": "?", "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q", "INT8": "b", "INT16": "h",
           "INT32": "i", "INT64": "q", "FP16": "e", "FP32": "f", "FP64": "d"}  # struct formats, one element each
DATATYPES = frozenset([*FORMATS, "BYTES"])
_LENGTH = struct.Struct("<I")


@dataclass
class TensorData:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, row-major; BYTES elements are bytes
    parameters: dict[str, Any] = field(default_factory=dict)


def element_count(name: str, shape: list[int]) -> int:
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise ApiError(400, f"Tensor {name!r}: the shape {shape} must be a list of non-negative integers.")
    return math.prod(shape)


def check_datatype(name: str, datatype: str) -> None:
    if datatype not in DATATYPES:
        raise ApiError(400, f"Tensor {name!r}: unknown datatype {datatype!r}; use one of {', '.join(sorted(DATATYPES))}.")


def from_raw(name: str, datatype: str, shape: list[int], raw: bytes) -> list[Any]:
    """The flat values of a tensor sent as raw bytes."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    if datatype == "BYTES":
        return _split_bytes(name, count, raw)
    form = FORMATS[datatype]
    expected = count * struct.calcsize(form)
    if len(raw) != expected:
        raise ApiError(400, f"Tensor {name!r}: {datatype} of shape {shape} takes {expected:,} bytes, not {len(raw):,}.")
    return list(struct.unpack(f"<{count}{form}", raw))


def _split_bytes(name: str, count: int, raw: bytes) -> list[bytes]:
    elements, at = [], 0
    view = memoryview(raw)
    while at < len(raw):
        if at + 4 > len(raw):
            raise ApiError(400, f"Tensor {name!r}: its BYTES data ends inside an element's 4-byte length.")
        (size,) = _LENGTH.unpack_from(view, at)
        if at + 4 + size > len(raw):
            raise ApiError(400, f"Tensor {name!r}: a BYTES element of {size:,} bytes runs past the data's end.")
        elements.append(bytes(view[at + 4:at + 4 + size]))
        at += 4 + size
    if len(elements) != count:
        raise ApiError(400, f"Tensor {name!r}: its shape holds {count} elements; the data holds {len(elements)}.")
    return elements


def to_raw(tensor: TensorData) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(value)) + value for value in map(_as_bytes, tensor.values))
    return struct.pack(f"<{len(tensor.values)}{FORMATS[tensor.datatype]}", *tensor.values)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def from_values(name: str, datatype: str, shape: list[int], values: list[Any]) -> list[Any]:
    """The flat values of a tensor sent as a (possibly nested) list, checked against its datatype and shape."""
    check_datatype(name, datatype)
    count = element_count(name, shape)
    flat = list(flatten(values))
    if len(flat) != count:
        raise ApiError(400, f"Tensor {name!r}: its shape {shape} holds {count} elements; the data holds {len(flat)}.")
    for value in flat:
        if not _fits(datatype, value):
            raise ApiError(400, f"Tensor {name!r}: {str(value)[:40]!r} is not a {datatype} element.")
    return flat


def _fits(datatype: str, value: Any) -> bool:
    if datatype == "BYTES":
        return isinstance(value, (str, bytes))
    if datatype == "BOOL" or isinstance(value, bool):
        return datatype == "BOOL" and isinstance(value, bool)
    return isinstance(value, (int, float) if datatype.startswith("FP") else int)


def flatten(values: Any) -> Any:
    """The scalars of a nested list (or tuple), row-major."""
    if isinstance(values, (list, tuple)):
        for value in values:
            yield from flatten(value)
    else:
        yield values


def to_json(tensor: TensorData) -> dict[str, Any]:
    """The tensor as the JSON of a response: BYTES elements as text (labels), numbers as they are."""
    values = [value.decode(errors="replace") if isinstance(value, bytes) else value for value in tensor.values]
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape, "data": values}
