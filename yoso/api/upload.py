"""Read the uploaded images out of a multipart/form-data body, in memory and within the size limit.

Starlette's form parser spools large files to temporary files on disk; yoso never writes an upload to
disk, so the body is read here, capped at max_upload_mb (checked on Content-Length first, then on the
bytes actually received), and only the `file` parts are kept, in order. Their file names are never used.
"""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from yoso.api.body import size
from yoso.api.errors import ApiError

FIELD = "file"
MAX_OTHER_PARTS = 16  # parts a form may have besides its `file` ones (YOSO_MAX_IMAGES_PER_REQUEST)


class _Parts:
    """python-multipart callbacks that keep the bodies of the parts named `file`."""

    def __init__(self, max_files: int) -> None:
        self.max_files = max_files
        self.count = 0
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.is_file_part = False
        self.files: list[bytes] = []
        self.chunks: list[bytes] = []
        self.ended = False  # the closing boundary was seen

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.header_value.extend(data[start:end]),
            "on_header_end": self.on_header_end,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.count += 1
        if self.count > self.max_files + MAX_OTHER_PARTS:
            raise ApiError(422, f"The form has more than {self.max_files + MAX_OTHER_PARTS} parts; send the "
                                f"images in '{FIELD}' fields and nothing else.")
        self.is_file_part = False
        self.chunks = []

    def on_header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self.header_value))
            self.is_file_part = options.get(b"name") == FIELD.encode()
            if self.is_file_part and len(self.files) == self.max_files:
                raise ApiError(422, f"The form has more than {self.max_files} '{FIELD}' parts "
                                    f"(YOSO_MAX_IMAGES_PER_REQUEST); send the other images in another request.")
        self.header_field.clear()
        self.header_value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file_part:
            self.chunks.append(data[start:end])

    def on_part_end(self) -> None:
        if self.is_file_part:
            self.files.append(b"".join(self.chunks))
        self.chunks = []

    def on_end(self) -> None:
        self.ended = True


async def read_image_uploads(request: Request, max_bytes: int, max_files: int) -> list[bytes]:
    """The bytes of each `file` field, in order; 413 past `max_bytes`, 422 without such a field or with more
    than `max_files`."""
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(422, "The multipart/form-data body has no boundary in its Content-Type.")
    limit = size(max_bytes)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise ApiError(413, f"The upload is {int(declared):,} bytes; the limit is {limit}.")
    parts = _Parts(max_files)
    received = 0
    try:
        parser = MultipartParser(boundary, parts.callbacks(), max_header_size=1024)  # refuses a boundary > 256 bytes
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + 64 * 1024:
                raise ApiError(413, f"The upload is larger than the limit of {limit}.")
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        detail = f"The multipart body is malformed ({error}); send the image in a field named '{FIELD}'."
        raise ApiError(422, detail) from None
    except ClientDisconnect:
        raise ApiError(499, "The client closed the connection before the upload was complete.") from None
    if not parts.ended:
        raise ApiError(422, "The multipart body ends before its closing boundary: send the complete upload.")
    if not parts.files:
        raise ApiError(422, f"The form has no field named '{FIELD}'; send the image in it.")
    if (total := sum(len(file) for file in parts.files)) > max_bytes:
        raise ApiError(413, f"The images are {total:,} bytes; the limit is {limit}.")
    return parts.files
