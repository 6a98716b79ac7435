"""The yoso HTTP API as Python calls: images in, bytes / counts / typed detections out, one error type.

One `httpx.Client` carries every request, so a script sending many images reuses its connections; it is
safe to share one `Client` between threads. Every failure, from a refused connection to a server's
`{"detail": ...}`, surfaces as `YosoError`, so a caller needs one `except` to report any of them.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import cv2
import httpx
import numpy as np

from yoso.status import ModelStatus

DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT_S = 60.0
RETRIES_ON_503 = 3
MAX_RETRY_WAIT_S = 10.0
RETRY_JITTER = 0.5  # wait Retry-After plus up to half again: clients refused together do not return together
COUNTS_HEADER = "X-Yoso-Counts"  # /predict: what it drew, per label, as JSON
TIMEOUT_HEADER = "X-Yoso-Timeout-Ms"  # how long we wait: the server refuses at once what it cannot answer in time

Image = str | os.PathLike | bytes | np.ndarray
"""A path to an image file, the file's bytes, or a decoded image array (as cv2.imread returns it)."""


class YosoError(Exception):
    """A request failed. `status` is the HTTP status (None when no answer came), `detail` the reason."""

    def __init__(self, status: int | None, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.status is None:
            return self.detail
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "HTTP error"
        return f"{self.status} {phrase}: {self.detail}"


class YosoConnectionError(YosoError):
    """No connection to the server: nothing listens there, or the name does not resolve."""


class YosoTimeout(YosoError):
    """The server did not answer within the client's timeout."""


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float
    box: tuple[int, int, int, int]
    """x1, y1, x2, y2 in pixels of the image sent."""


@dataclass(frozen=True)
class AnnotatedImage:
    jpeg: bytes
    """The image with every detection's box, label and confidence drawn, at the input size."""
    counts: dict[str, int]
    """What was drawn, per label."""

    def save(self, path: str | os.PathLike) -> Path:
        target = Path(path)
        target.write_bytes(self.jpeg)
        return target


@dataclass(frozen=True)
class DetectResult:
    model: str
    confidence: float
    """The confidence threshold the server applied."""
    width: int
    height: int
    detections: list[Detection]
    inference_ms: float


ModelInfo = ModelStatus  # the name this library has always used for the server's ModelStatus


@dataclass(frozen=True)
class ModelsInfo:
    default: str
    models: list[ModelStatus]


@dataclass(frozen=True)
class Health:
    status: str
    """"ready", or "starting" / "draining" while the server cannot take images."""

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def encode_image(image: Image) -> tuple[str, bytes]:
    """(file name, bytes) to upload. Arrays go as PNG: lossless, so the server sees exactly these pixels."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image)
    if isinstance(image, np.ndarray):
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise ValueError(f"cannot encode an array of shape {image.shape} and dtype {image.dtype} as an image")
        return "image.png", encoded.tobytes()
    raise TypeError(f"an image is a path, bytes or a numpy array, not {type(image).__name__}")


def _retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (delta-seconds or HTTP-date form), None without the header."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detect_result(body: dict[str, Any]) -> DetectResult:
    detections = [Detection(d["label"], d["confidence"], tuple(d["box"])) for d in body["detections"]]
    return DetectResult(body["model"], body["confidence"], body["width"], body["height"], detections,
                        body["inference_ms"])


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    text = response.text.strip()
    return text[:200] if text else response.reason_phrase


class Client:
    """A yoso server at `base_url`. Use it as a context manager, or call `close()`, to free its connections.

    `model` and `confidence` left as None take the server's defaults (YOSO_DEFAULT_MODEL, 0.5).
    A 503 carrying Retry-After (the server is at capacity or still loading) is retried up to `retries`
    times, waiting what the server asks for plus up to half again at random, at most `max_retry_wait_s`.
    Each image request tells the server the `timeout` (X-Yoso-Timeout-Ms), so that a server that could not
    answer within it refuses at once instead of answering after the client has stopped listening.
    """

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT_S, api_key: str | None = None,
                 retries: int = RETRIES_ON_503, max_retry_wait_s: float = MAX_RETRY_WAIT_S) -> None:
        if "://" not in base_url:
            base_url = "http://" + base_url
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)
        except httpx.InvalidURL as error:
            raise YosoError(None, f"{base_url!r} is not a valid server URL: {error}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(self, image: Image, model: str | None = None, confidence: float | None = None) -> bytes:
        """The image as JPEG with every detection's box, label and confidence drawn, at the input size."""
        return self.annotate(image, model, confidence).jpeg

    def annotate(self, image: Image, model: str | None = None, confidence: float | None = None) -> AnnotatedImage:
        """`predict` and what it drew, per label, from one inference."""
        response = self._upload("/predict", [image], model, confidence)
        return AnnotatedImage(response.content, json.loads(response.headers.get(COUNTS_HEADER, "{}")))

    def predict_to_file(self, image: Image, path: str | os.PathLike, model: str | None = None,
                        confidence: float | None = None) -> Path:
        """`predict`, written to `path` (a JPEG whatever the suffix); returns the path."""
        return self.annotate(image, model, confidence).save(path)

    def count_objects(self, image: Image, model: str | None = None, confidence: float | None = None) -> dict[str, int]:
        """How many objects of each label; labels with none are absent."""
        return dict(self._upload("/count_objects", [image], model, confidence).json()["items"])

    def detect(self, image: Image, model: str | None = None, confidence: float | None = None) -> DetectResult:
        return _detect_result(self._upload("/detect", [image], model, confidence).json())

    def detect_many(self, images: Sequence[Image], model: str | None = None,
                    confidence: float | None = None) -> list[DetectResult | YosoError]:
        """`detect` for several images in one request (at most the server's YOSO_MAX_IMAGES_PER_REQUEST), in
        order: an image the server could not take is a YosoError in its place. With one image, the answer
        is `[detect(image)]`: an image it could not take raises, as `detect` does."""
        body = self._upload("/detect", list(images), model, confidence).json()
        return [_detect_result(entry) if "detections" in entry else YosoError(entry["status"], entry["detail"])
                for entry in body.get("results", [body])]

    def infer(self, model: str, instances: list[Any]) -> list[Any]:
        """A JSON model's predictions (KServe V1: POST /v1/models/{model}:predict), one per instance, in order."""
        body = self._request("POST", f"/v1/models/{quote(model, safe='')}:predict", json={"instances": instances},
                             headers=self._deadline()).json()
        return list(body["predictions"])

    def models(self) -> ModelsInfo:
        body = self._request("GET", "/models").json()
        return ModelsInfo(body["default"], [ModelStatus(**model) for model in body["models"]])

    def health(self) -> Health:
        """Readiness: whether the server takes images now. Only a server that cannot be reached raises."""
        response = self._request("GET", "/readyz", ok=(200, 503))
        try:
            status = response.json().get("status")
        except ValueError:  # not yoso's JSON: a proxy's error page, say
            status = None
        return Health(str(status or ("ready" if response.status_code == 200 else "unavailable")))

    def _upload(self, path: str, images: list[Image], model: str | None, confidence: float | None) -> httpx.Response:
        """One `file` part per image, in order."""
        files = [("file", (*encode_image(image), "application/octet-stream")) for image in images]
        params: dict[str, Any] = {}
        if model is not None:
            params["model"] = model
        if confidence is not None:
            params["confidence"] = confidence
        return self._request("POST", path, params=params, files=files, headers=self._deadline())

    def _deadline(self) -> dict[str, str]:
        return {TIMEOUT_HEADER: f"{max(1.0, self.timeout * 1000):.0f}"}

    def _request(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        retries_left = self.retries
        while True:
            response = self._send(method, path, **kwargs)
            if response.status_code in ok:
                return response
            wait_s = _retry_after_s(response) if response.status_code == 503 else None
            if wait_s is None or retries_left == 0:
                raise YosoError(response.status_code, _detail(response))
            retries_left -= 1
            time.sleep(min(wait_s * (1 + random.random() * RETRY_JITTER), self.max_retry_wait_s))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self.base_url + path
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise YosoTimeout(None, f"no answer from {url} within {self.timeout:g} s") from None
        except httpx.ConnectError as error:
            reason = re.sub(r"^\[Errno -?\d+\] ", "", str(error)) or "connection failed"
            raise YosoConnectionError(None, f"cannot connect to {self.base_url}: {reason}") from None
        except httpx.HTTPError as error:
            raise YosoError(None, f"request to {url} failed: {error}") from None
