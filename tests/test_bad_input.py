"""Every bad input of the core contract gets a clear 4xx JSON detail, never a 5xx, and the server lives on."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from tests.support import image_bytes

ENDPOINTS = ["/predict", "/count_objects", "/detect"]


def png_declaring(width: int, height: int) -> bytes:
    """A small, valid PNG whose header declares width x height (its data is a few compressed rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width * 3 + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def post(client, endpoint, content: bytes, name="image.jpg", params=None, field="file"):
    return client.post(endpoint, params=params, files={field: (name, content, "image/jpeg")})


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for word in words:
        assert word.lower() in detail.lower(), detail


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_empty_file_is_422(client, endpoint):
    assert_error(post(client, endpoint, b""), 422, "empty")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bytes_that_are_not_an_image_are_415(client, endpoint):
    assert_error(post(client, endpoint, b"this is plain text, not a JPEG"), 415, "not an image")


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_truncated_jpeg_is_422(client, endpoint):
    data = image_bytes("car.jpg")
    assert_error(post(client, endpoint, data[: len(data) // 2]), 422, "truncated")


def test_truncated_png_is_422(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    assert_error(post(client, "/count_objects", buffer.getvalue()[:-20], "x.png"), 422, "truncated")


def test_upload_over_the_size_limit_is_413(client):
    assert_error(post(client, "/count_objects", b"\xff" * (11 * 1024 * 1024)), 413, "limit")


def test_image_declaring_too_many_pixels_is_refused_from_its_header(client):
    bomb = png_declaring(25000, 25000)
    assert len(bomb) < 100_000
    assert_error(post(client, "/count_objects", bomb, "bomb.png"), 413, "pixels")


def test_unsupported_format_is_415(client):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "ICO")
    assert_error(post(client, "/count_objects", buffer.getvalue(), "x.jpg"), 415, "not supported", "JPEG, PNG")


def test_a_camera_jpeg_with_a_multi_picture_segment_is_a_jpeg(client):
    """Pillow calls such files MPO; OpenCV reads them as the JPEG they are."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(image_bytes("car.jpg"))).save(buffer, "MPO", save_all=True,
                                                        append_images=[Image.new("RGB", (64, 48))])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    response = post(client, "/count_objects", buffer.getvalue())
    assert response.status_code == 200 and response.json() == {"items": {"car": 1}}


def test_format_is_decided_by_bytes_not_name_or_content_type(client):
    response = client.post("/count_objects", files={"file": ("notes.txt", image_bytes("car.jpg"), "text/plain")})
    assert response.status_code == 200 and response.json() == {"items": {"car": 1}}


def test_unknown_model_is_404_and_lists_installed_models(client):
    response = post(client, "/count_objects", image_bytes("car.jpg"), params={"model": "yolov9"})
    assert_error(response, 404, "unknown model", "yolov3-tiny", "yolov4-tiny")


def test_known_model_not_installed_is_409_and_says_how_to_install(client, model_store):
    from yoso.model.zoo import ZOO

    missing = next(name for name, spec in ZOO.items() if not model_store.is_installed(spec))
    response = post(client, "/count_objects", image_bytes("car.jpg"), params={"model": missing})
    assert_error(response, 409, "not installed", f"yoso models pull {missing}")


@pytest.mark.parametrize("confidence", ["0", "-0.1", "1.01", "nan", "NaN", "inf", "abc", ""])
def test_confidence_outside_0_1_or_not_a_number_is_422(client, confidence):
    response = post(client, "/count_objects", image_bytes("car.jpg"), params={"confidence": confidence})
    assert_error(response, 422, "confidence")


def test_confidence_of_exactly_one_is_accepted(client):
    response = post(client, "/count_objects", image_bytes("car.jpg"), params={"confidence": "1"})
    assert response.status_code == 200 and response.json() == {"items": {}}


def test_missing_file_field_is_422(client):
    assert_error(post(client, "/count_objects", image_bytes("car.jpg"), field="image"), 422, "'file'")


def test_a_body_that_is_not_multipart_is_422(client):
    response = client.post("/count_objects", content=image_bytes("car.jpg"), headers={"content-type": "image/jpeg"})
    assert_error(response, 422, "multipart/form-data")


def test_the_server_is_healthy_after_all_of_that(client):
    assert client.get("/healthz").status_code == 200
    assert post(client, "/count_objects", image_bytes("car.jpg")).json() == {"items": {"car": 1}}
