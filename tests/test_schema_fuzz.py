"""Schema fuzzing: schemathesis drives every operation of the live server's /openapi.json.

Positive and negative cases (valid and schema-violating parameters and bodies), with real images where a
file is expected (the sample photos in several formats, some of them mutated, besides arbitrary bytes).
Every response must be a non-5xx whose status, content type, headers and body the schema documents, and
schema-violating requests must be refused with a 4xx. The budget is fixed (examples per operation, a
fixed seed per operation, no shrinking) so the run is reproducible and bounded.
"""

from __future__ import annotations

import base64
import io
import zlib
from collections import Counter
from collections.abc import Iterator

import hypothesis.strategies as st
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support import SAMPLE_IMAGES, image_bytes
from yoso.api.admission import TIMEOUT_HEADER

EXAMPLES_PER_OPERATION = 175
MINIMUM_TOTAL_CASES = 500


def not_a_server_error_but_a_refused_short_timeout(ctx, response, case) -> bool | None:
    """A 5xx fails, but for the documented refusal of a request whose own timeout (X-Yoso-Timeout-Ms, which
    the fuzzer sets as low as 5e-324 ms) cannot fit its inference: 503 with Retry-After."""
    short_timeout = TIMEOUT_HEADER.lower() in {name.lower() for name in case.headers or {}}
    if response.status_code == 503 and short_timeout and "retry-after" in response.headers:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    not_a_server_error_but_a_refused_short_timeout,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")


def _reencoded(name: str, image_format: str) -> bytes:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(image_bytes(name))) as image:
        image.convert("RGB").save(buffer, image_format)
    return buffer.getvalue()


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "truncate", "splice"]))
    if kind == "flip":
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16)):
            data[position] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    else:
        position = draw(st.integers(0, len(data)))
        data[position:position] = draw(st.binary(min_size=1, max_size=256))
    return bytes(data)


def image_bodies() -> st.SearchStrategy[bytes]:
    """Mostly real images (so that most positive cases run inference), some mutated, some arbitrary bytes."""
    originals = [image_bytes(name) for name in SAMPLE_IMAGES]
    originals += [_reencoded("car1.jpg", image_format) for image_format in FORMATS]
    real = st.sampled_from(originals)
    return st.one_of(real, real, real, real.flatmap(_mutated), st.binary(max_size=2048))


@pytest.fixture(scope="module")
def live_schema(server) -> Iterator[schemathesis.BaseSchema]:
    schemathesis.openapi.format("binary", image_bodies())  # multipart uploads
    schemathesis.openapi.format("byte", image_bodies().map(lambda body: base64.b64encode(body).decode()))  # JSON
    try:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    finally:
        schemathesis.specs.openapi.formats.unregister_string_format("binary")
        schemathesis.specs.openapi.formats.unregister_string_format("byte")


def fuzz(operation, base_url: str, statuses: Counter) -> None:
    """Run the operation's budget of positive and negative cases; raises on the first failing case."""
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @seed(zlib.crc32(operation.label.encode()))
    @given(case=cases)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
        statuses[response.status_code] += 1

    run()


def test_every_operation_of_the_live_schema_conforms_and_never_fails_with_a_5xx(server, live_schema, subtests):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"POST /predict", "POST /count_objects", "POST /detect", "GET /models"} <= labels
    sent: dict[str, Counter] = {}
    level = httpx.get(f"{server.url}/admin/log-level", timeout=10).json()
    try:
        for operation in operations:
            sent[operation.label] = Counter()
            with subtests.test(operation=operation.label):
                fuzz(operation, server.url, sent[operation.label])
    finally:  # the fuzzer sets valid levels too: the session's server goes back to its own
        httpx.put(f"{server.url}/admin/log-level", json=level, timeout=10)
    total = sum(sum(statuses.values()) for statuses in sent.values())
    summary = {label: dict(statuses) for label, statuses in sent.items()}
    assert total >= MINIMUM_TOTAL_CASES, summary
    assert all(sent.values()), summary
    inference = Counter()
    for label in ("POST /predict", "POST /count_objects", "POST /detect"):
        inference.update(sent[label])
    assert inference[200] >= 100, summary  # the image bodies really reached the model
    assert server.process.poll() is None


def test_undocumented_methods_are_405_with_allow_and_a_json_error(server, client, live_schema):
    methods = {"GET", "POST", "PUT", "PATCH", "DELETE"}
    for path, item in live_schema.raw_schema["paths"].items():
        declared = {method.upper() for method in item}
        for method in sorted(methods - declared):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert set(response.headers["allow"].replace(" ", "").split(",")) >= declared
            assert response.json()["error" if path.startswith("/v2") else "detail"]  # the protocol's shape
