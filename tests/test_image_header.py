"""Image headers read before decoding (yoso.imaging.inspect): a plain JPEG's size and end by yoso's one pass over
its segments, every other file by Pillow; both must say the same of the same file. Real photos, encoded here."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.support import image_bytes
from yoso import imaging

PHOTO = Image.open(io.BytesIO(image_bytes("car2.jpg")))
OPTIONS = {"baseline": {}, "progressive": {"progressive": True}, "optimized": {"optimize": True},
           "exif": {"exif": PHOTO.getexif().tobytes()}, "icc profile": {"icc_profile": b"\0" * 70_000},
           "comment": {"comment": b"made by a camera"}}


def jpeg(mode: str, **options) -> bytes:
    buffer = io.BytesIO()
    PHOTO.convert(mode).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def read_by_pillow(data: bytes) -> imaging.ImageInfo:
    with Image.open(io.BytesIO(data)) as image:
        return imaging.ImageInfo("JPEG", image.width, image.height)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_plain_jpeg_is_read_in_one_pass_as_pillow_reads_it_and_refused_once_cut(mode, options):
    data = jpeg(mode, **options)
    assert imaging._plain_jpeg(data) is not None  # the pass read it, not Pillow
    assert imaging.inspect(data, 40_000_000) == read_by_pillow(data)
    with pytest.raises(imaging.ImageError, match="truncated") as cut:
        imaging.inspect(data[:-64], 40_000_000)  # cut in its scan: the header reads, the end is missing
    assert cut.value.status == 422


def test_a_jpeg_the_pass_does_not_read_plainly_is_left_to_pillow():
    data = jpeg("RGB")
    escaped = data[:2] + b"\xff\x00" * 8 + data[2:]  # bytes between segments: Pillow skips them, the pass does not
    assert imaging._plain_jpeg(escaped) is None
    assert imaging.inspect(escaped, 40_000_000) == read_by_pillow(data)


def test_a_frame_larger_than_the_pixel_limit_is_refused_from_the_pass_with_413():
    with pytest.raises(imaging.ImageError, match="pixels") as refused:
        imaging.inspect(jpeg("RGB"), max_pixels=1000)
    assert refused.value.status == 413
