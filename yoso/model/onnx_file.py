"""The ONNX conversion of a Darknet model as a file: `<model>.onnx` beside its cfg and weights, which `yoso models
pull` writes for the zoo and `yoso models convert` for any model. The file names the sha256 of the cfg and
weights it came from and the converter's version, and is used only while they match: otherwise the model is
converted again, in memory, when it loads (a second or less for the tiny models).
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


def _sources(cfg: Path, weights: Path) -> dict[str, str]:
    return {"darknet_cfg_sha256": sha256_of(cfg), "darknet_weights_sha256": sha256_of(weights),
            "converter_version": CONVERTER_VERSION}


def convert_files(cfg: Path, weights: Path) -> bytes:
    """The serialized ONNX model of a cfg and weights file."""
    return convert(cfg.read_text(errors="replace"), weights.read_bytes(), _sources(cfg, weights)).SerializeToString()


def converted(cfg: Path, weights: Path) -> bytes | None:
    """The ONNX file beside the cfg, when it is the conversion of exactly these files by this converter."""
    try:
        data = onnx_path(cfg).read_bytes()
        props = {prop.key: prop.value for prop in onnx.load_from_string(data).metadata_props}
    except (OSError, DecodeError):  # none yet, or not an ONNX file
        return None
    return data if props == _sources(cfg, weights) else None


def onnx_of(cfg: Path, weights: Path) -> bytes:
    """The ONNX model of these files: the file beside them if it is theirs, else converted now, in memory."""
    return converted(cfg, weights) or convert_files(cfg, weights)


def write_onnx(cfg: Path, weights: Path) -> Path:
    """Convert into `<model>.onnx` beside the cfg atomically (a temporary file renamed into place once
    complete); a file that is already their conversion is left as it is."""
    target = onnx_path(cfg)
    if converted(cfg, weights) is not None:
        return target
    data = convert_files(cfg, weights)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(staging, 0o644)
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target
