"""How many bytes a Darknet weights file must have for its cfg: OpenCV reads a truncated file without a word and
serves garbage, so a version whose weights do not fit its cfg exactly is refused before it loads.

The file is a header (major, minor, revision as int32; then the images seen, int64 from version 0.2 on) and one
float32 per parameter, layer by layer: a convolution's biases, its batch norm's scales, means and variances,
then its kernels. Only convolutions hold parameters among the layers the zoo uses.
"""

from __future__ import annotations

import struct
from pathlib import Path

_PASS_THROUGH = {"maxpool", "upsample", "shortcut", "yolo", "dropout", "avgpool", "region", "reorg"}


class CfgError(ValueError):
    """The cfg cannot be read as a Darknet network."""


def read_cfg(text: str) -> list[tuple[str, dict[str, str]]]:
    """The cfg's sections in order, each (kind, options); the first is [net]."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].strip().lower(), {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
        else:
            raise CfgError(f"line {raw.strip()[:40]!r} is neither a [section] nor key=value")
    if not sections or sections[0][0] not in ("net", "network"):
        raise CfgError("it does not start with a [net] section")
    return sections


def parameter_count(cfg_text: str) -> int:
    """The float32 parameters a network of this cfg holds."""
    sections = read_cfg(cfg_text)
    try:
        channels = int(sections[0][1].get("channels", "3"))
        outputs: list[int] = []
        total = 0
        for kind, options in sections[1:]:
            if kind == "convolutional":
                filters, size = int(options["filters"]), int(options["size"])
                groups = int(options.get("groups", "1"))
                batch_norm = options.get("batch_normalize", "0") == "1"
                total += filters * (channels // groups) * size * size + filters * (4 if batch_norm else 1)
                channels = filters
            elif kind == "route":
                here = len(outputs)
                layers = [int(layer) for layer in options["layers"].split(",")]
                channels = sum(outputs[here + layer if layer < 0 else layer] for layer in layers)
                channels //= int(options.get("groups", "1"))
            elif kind not in _PASS_THROUGH:
                raise CfgError(f"layer [{kind}] is not one yoso can check")
            outputs.append(channels)
    except (KeyError, ValueError, IndexError) as error:
        raise CfgError(f"a layer is malformed ({type(error).__name__}: {error})") from None
    return total


def onnx_path(cfg: Path) -> Path:
    """Where the ONNX conversion of a cfg's network goes (yoso.model.darknet_onnx): `<model>.onnx` beside it."""
    return cfg.with_suffix(".onnx")


def weights_problem(cfg: Path, weights: Path) -> str | None:
    """Why these weights do not fit this cfg (None when their size is exactly right)."""
    try:
        count = parameter_count(cfg.read_text(errors="replace"))
    except CfgError as error:
        return f"{cfg.name} does not parse: {error}"
    with weights.open("rb") as stream:
        header = stream.read(12)
    if len(header) < 12:
        return f"{weights.name} is too short to hold a Darknet header"
    major, minor, _ = struct.unpack("<3i", header)
    expected = 12 + (8 if major * 10 + minor >= 2 else 4) + 4 * count
    actual = weights.stat().st_size
    if actual != expected:
        return (f"{weights.name} has {actual:,} bytes where {cfg.name} needs {expected:,} "
                f"({'truncated' if actual < expected else 'too long'}, or the wrong cfg)")
    return None
