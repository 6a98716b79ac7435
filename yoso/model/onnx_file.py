"""The ONNX conversion of a Darknet model as a file: `<model>.onnx` beside its cfg and weights, which `yoso models
pull` writes for the zoo and `yoso models convert` for any model. The file names the sha256 of the cfg and
weights it came from, the input size it takes and the converter's version, and is used only while they match:
otherwise the model is converted again, in memory, when it loads (a second or less for the tiny models).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from yoso.model.darknet import onnx_path
from yoso.model.darknet_onnx import CONVERTER_VERSION, convert
from yoso.model.store import sha256_of


def _sources(cfg: Path, weights: Path, input_size: int) -> dict[str, str]:
    return {"darknet_cfg_sha256": sha256_of(cfg), "darknet_weights_sha256": sha256_of(weights),
            "input_size": str(input_size), "converter_version": CONVERTER_VERSION}


def convert_files(cfg: Path, weights: Path, input_size: int) -> bytes:
    """The serialized ONNX model of a cfg and weights file, taking `input_size` square images."""
    return convert(cfg.read_text(errors="replace"), weights.read_bytes(), input_size,
                   _sources(cfg, weights, input_size)).SerializeToString()


def onnx_on_disk(cfg: Path, weights: Path, input_size: int) -> bytes | None:
    """The ONNX file beside the cfg, when it is the conversion of exactly these files, at this size, by this
    converter (None otherwise: no file, another file, or one made from other files)."""
    try:
        data = onnx_path(cfg).read_bytes()
        props = {prop.key: prop.value for prop in onnx.load_from_string(data).metadata_props}
    except (OSError, DecodeError):  # none yet, or not an ONNX file
        return None
    return data if props == _sources(cfg, weights, input_size) else None


def onnx_for(cfg: Path, weights: Path, input_size: int) -> bytes:
    """The ONNX model of these files: the file beside them if it is theirs, else converted now, in memory."""
    return onnx_on_disk(cfg, weights, input_size) or convert_files(cfg, weights, input_size)


def write_onnx(cfg: Path, weights: Path, input_size: int) -> Path:
    """Convert into `<model>.onnx` beside the cfg atomically (a temporary file renamed into place once
    complete); a file that is already their conversion is left as it is."""
    target = onnx_path(cfg)
    if onnx_on_disk(cfg, weights, input_size) is not None:
        return target
    data = convert_files(cfg, weights, input_size)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target
