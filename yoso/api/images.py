"""The images of a request to /detect, /count_objects or /predict: the `file` parts of a multipart upload, or
the base64 `image` (one) or `images` (several) of a JSON body; either way within YOSO_MAX_UPLOAD_MB as a whole
and YOSO_MAX_IMAGES_PER_REQUEST images.

One image sent as `image`, or as the one `file` part, is answered as one image; `images`, or several `file`
parts, is answered `{"results": [...]}`, one entry per image, in order.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import Request
from python_multipart.multipart import parse_options_header

from yoso.api.body import read_json
from yoso.api.errors import ApiError
from yoso.api.upload import FIELD, read_image_uploads
from yoso.config import Settings

_WHAT_TO_SEND = 'send {"image": "<base64>"}, or {"images": [...]}'
_SEVERAL_ANSWERED = ('answered {"results": [...]}, one entry per image, in order (at most '
                     "YOSO_MAX_IMAGES_PER_REQUEST images, within YOSO_MAX_UPLOAD_MB together)")


def _body_doc(file: str, json_schema: dict, json_examples: dict) -> dict:
    """The request body as OpenAPI documents it (and /docs shows it): a multipart upload, or JSON."""
    upload = {"type": "object", "required": [FIELD],
              "properties": {FIELD: {"type": "string", "format": "binary", "description": file}}}
    examples = {name: {"summary": summary, "value": value} for name, (summary, value) in json_examples.items()}
    return {"required": True, "content": {"multipart/form-data": {"schema": upload},
                                          "application/json": {"schema": json_schema, "examples": examples}}}


_BASE64 = {"type": "string", "format": "byte", "description": "The image file, base64-encoded."}
_PNG_8X8 = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mOsWHCCARtgYsABBqcEAHoHAfCY5IuSAAAAAElFTkSuQmCC"
_ONE_EXAMPLE = ("One image: an 8 x 8 PNG", {"image": _PNG_8X8})
_ONE = {"type": "object", "required": ["image"], "properties": {"image": _BASE64}}
_SEVERAL = {"type": "object", "required": ["images"], "properties": {"images": {
    "type": "array", "minItems": 1, "items": _BASE64, "description": f"Several images, {_SEVERAL_ANSWERED}.",
}}}
IMAGES_BODY_DOC = _body_doc(f"The image. Repeat the field to send several, {_SEVERAL_ANSWERED}.",
                            {"oneOf": [_ONE, _SEVERAL]},
                            {"one": _ONE_EXAMPLE, "several": ("Two images", {"images": [_PNG_8X8, _PNG_8X8]})})
ONE_IMAGE_BODY_DOC = _body_doc("The image.", _ONE, {"one": _ONE_EXAMPLE})


class ImageBody:
    """Reads a request's images (`read`, or `read_one` where only one is answered); `several` then says
    whether the answer is a list of results."""

    def __init__(self, request: Request, settings: Settings) -> None:
        self.request = request
        self.max_bytes = settings.max_upload_bytes
        self.max_images = settings.max_images_per_request
        self.several = False

    async def read(self) -> list[bytes]:
        content_type, _ = parse_options_header(self.request.headers.get("content-type", ""))
        if content_type == b"application/json":
            self.several, encoded = _encoded_images(await read_json(self.request, self.max_bytes, _WHAT_TO_SEND), self.max_images)
            return [_decoded(text, where) for where, text in encoded]
        if content_type == b"multipart/form-data":
            images = await read_image_uploads(self.request, self.max_bytes, self.max_images)
            self.several = len(images) > 1
            return images
        raise ApiError(422, f"Send the image as multipart/form-data in a field named '{FIELD}', or as JSON "
                            f'{{"image": "<base64>"}}.')

    async def read_one(self) -> bytes:
        images = await self.read()
        if self.several:
            raise ApiError(422, "/predict answers one image and the request has several: send one, or send them "
                                "to /detect or /count_objects.")
        return images[0]


def _encoded_images(document: Any, max_images: int) -> tuple[bool, list[tuple[str, Any]]]:
    """Whether the document sends several images, and each one's base64 with where it stands."""
    if not isinstance(document, dict) or ("image" in document) == ("images" in document):
        raise ApiError(422, 'Send a JSON object with either "image" (one image, base64) or "images" (a list).')
    if "image" in document:
        return False, [("image", document["image"])]
    images = document["images"]
    if not isinstance(images, list) or not images:
        raise ApiError(422, '"images" must be a list of at least one base64-encoded image.')
    if len(images) > max_images:
        raise ApiError(422, f'"images" has {len(images)} images; the limit is {max_images} '
                            f"(YOSO_MAX_IMAGES_PER_REQUEST): send the others in another request.")
    return True, [(f"images[{index}]", text) for index, text in enumerate(images)]


def _decoded(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(422, f"{where} must be a string: the image file, base64-encoded.")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as error:
        raise ApiError(422, f"{where} is not valid base64 ({error}); send the image file's bytes base64-encoded, "
                            f"on one line, with no data: prefix.") from None
