"""Access control and CORS: API keys on every endpoint but the probes and docs, a separate metrics token,
browsers allowed only from the configured origins, and secrets that never reach the log."""

from __future__ import annotations

import base64
import secrets

import httpx
import pytest

from tests.support import eventually, image_bytes, raw_http, serving
from yoso.api.security import AccessPolicy

KEYS = [f"key-one-{secrets.token_hex(16)}", f"key-two-{secrets.token_hex(16)}"]
KEY_PUT_IN_A_URL = f"key-three-{secrets.token_hex(16)}"  # URLs are logged (by yoso and every proxy): never put keys there
METRICS_TOKEN = f"metrics-{secrets.token_hex(16)}"
ORIGIN = "https://app.example.com"
OPEN_PATHS = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs", "/redoc", "/openapi.json", "/"]


@pytest.fixture(scope="module")
def keyed(model_store, tmp_path_factory):
    """A server with two keys, a metrics token and one CORS origin, logging at its most verbose level."""
    env = {
        "YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny", "YOSO_LOG_LEVEL": "trace",
        "YOSO_API_KEY": f" {KEYS[0]} , {KEYS[1]} ,{KEY_PUT_IN_A_URL}",
        "YOSO_METRICS_TOKEN": METRICS_TOKEN, "YOSO_CORS_ORIGINS": ORIGIN,
    }
    yield from serving(env, tmp_path_factory.mktemp("keyed"))


@pytest.fixture()
def http(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as client:
        yield client


def upload() -> dict:
    return {"file": ("car.jpg", image_bytes("car.jpg"), "image/jpeg")}


def call(http: httpx.Client, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    """The operation with a body it takes: an image upload, KServe V1 instances, an Open Inference Protocol
    IMAGE tensor, or the log level the server has."""
    path = path.replace("{name}", "yolov3-tiny").replace("{version}", "1")
    if path.startswith("/v2/") and method == "POST":
        image = {"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                 "data": [base64.b64encode(image_bytes("car.jpg")).decode()]}
        return http.post(path, headers=headers, json={"inputs": [image]})
    if path.startswith("/v1/"):
        return http.request(method, path, headers=headers, json={"instances": [1]} if method == "POST" else None)
    if method == "PUT":
        return http.request(method, path, headers=headers, json={"level": "trace"})  # as YOSO_LOG_LEVEL sets it
    files = upload() if method == "POST" else None
    return http.request(method, path, headers=headers, files=files)


def guarded_operations(http: httpx.Client) -> list[tuple[str, str]]:
    paths = http.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item if path not in OPEN_PATHS]


def assert_unauthorized(response: httpx.Response, challenge: str = "Bearer") -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["content-type"] == "application/json"
    detail = error_of(response)
    assert "key" in detail.lower() or "token" in detail.lower(), detail


def error_of(response: httpx.Response) -> str:
    """The message of an error: `detail`, or `error` under /v2 (the Open Inference Protocol's shape)."""
    body = response.json()
    return body["error"] if response.url.path.startswith("/v2") else body["detail"]


def test_every_operation_but_probes_and_docs_needs_a_key(http):
    operations = guarded_operations(http)
    assert {("POST", "/predict"), ("POST", "/count_objects"), ("POST", "/detect"), ("GET", "/models")} <= set(operations)
    for method, path in operations + [("GET", "/metrics")]:
        response = call(http, method, path)
        assert_unauthorized(response)
        assert "X-API-Key" in error_of(response)


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_probes_and_docs_need_no_key(http, path):
    assert http.get(path).status_code == 200


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_each_key_opens_every_operation_in_either_header(http, key, header):
    headers = {header: f"Bearer {key}" if header == "Authorization" else key}
    for method, path in guarded_operations(http):
        response = call(http, method, path, headers)
        # past the key check: yolov3-tiny is a detector, so KServe V1's predict says where its images go
        expected = 422 if path.endswith(":predict") else 200
        assert response.status_code == expected, (method, path, response.text)
    assert call(http, "POST", "/count_objects", headers).json() == {"items": {"car": 1}}


def test_the_bearer_scheme_is_case_insensitive(http):
    assert call(http, "GET", "/models", {"Authorization": f"bearer {KEYS[0]}"}).status_code == 200


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer not-the-key"},
    {"Authorization": f"Bearer {KEYS[0]}x"},
    {"Authorization": f"Bearer {KEYS[0][:-1]}"},
    {"Authorization": f"Bearer {KEYS[0]},{KEYS[1]}"},
    {"X-API-Key": KEYS[0].upper()},
    {"Authorization": f"Bearer {METRICS_TOKEN}"},
], ids=["other", "key-plus-a-character", "key-minus-a-character", "both-keys-joined", "upper-case", "metrics-token"])
def test_a_wrong_credential_is_401_invalid_token(http, headers):
    assert_unauthorized(call(http, "POST", "/detect", headers), 'Bearer error="invalid_token"')


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Basic {KEYS[0]}"}, {"Authorization": KEYS[0]}, {"Authorization": "Bearer"}, {"X-API-Key": ""},
], ids=["basic-scheme", "no-scheme", "empty-bearer", "empty-x-api-key"])
def test_a_key_not_sent_as_bearer_or_x_api_key_is_no_key(http, headers):
    assert_unauthorized(call(http, "GET", "/models", headers))


def test_a_key_in_the_query_string_is_not_accepted(http):
    assert_unauthorized(http.get("/models", params={"api_key": KEY_PUT_IN_A_URL, "X-API-Key": KEY_PUT_IN_A_URL}))


def test_metrics_take_the_metrics_token_and_not_an_api_key(http):
    assert http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
    assert http.get("/metrics", headers={"X-API-Key": METRICS_TOKEN}).status_code == 200
    assert_unauthorized(http.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}),
                        'Bearer error="invalid_token"')
    assert "YOSO_METRICS_TOKEN" in http.get("/metrics").json()["detail"]


def test_an_unauthenticated_upload_is_refused_from_its_headers_before_any_body_is_read(keyed):
    head = (b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 50000000\r\n")
    answer = raw_http(keyed.port, head + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 401 ") and b"www-authenticate: Bearer" in answer
    # With the key, the same head gets past access control and is judged by the upload limit instead.
    answer = raw_http(keyed.port, head + f"X-API-Key: {KEYS[1]}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_the_openapi_schema_declares_the_schemes_and_401_on_guarded_operations(http):
    schema = http.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["BearerAuth"] == {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"}
    assert schemes["APIKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, item in schema["paths"].items():
        shape = "ProtocolError" if path.startswith("/v2") else "ErrorResponse"  # the Open Inference Protocol's
        error = {"$ref": f"#/components/schemas/{shape}"}
        for operation in item.values():
            if path in OPEN_PATHS:
                assert "security" not in operation, path
            else:
                assert operation["security"] == [{"BearerAuth": []}, {"APIKeyHeader": []}], path
                assert operation["responses"]["401"]["content"]["application/json"]["schema"] == error, path


def test_cors_preflight_is_answered_for_the_configured_origin_only(http):
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, x-api-key, x-yoso-timeout-ms"}
    allowed = http.options("/detect", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    allowed_headers = set(allowed.headers["access-control-allow-headers"].lower().split(", "))
    assert {"authorization", "x-api-key", "x-yoso-timeout-ms"} <= allowed_headers
    refused = http.options("/detect", headers={"Origin": "https://evil.example", **preflight})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_cors_headers_reach_browsers_on_answers_and_refusals_alike(http):
    ok = http.get("/models", headers={"Origin": ORIGIN, "X-API-Key": KEYS[0]})
    refused = http.get("/models", headers={"Origin": ORIGIN})
    assert ok.status_code == 200 and refused.status_code == 401
    for response in (ok, refused):
        assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "WWW-Authenticate" in refused.headers["access-control-expose-headers"]
    assert "X-Yoso-Counts" in ok.headers["access-control-expose-headers"]  # what /predict drew
    other = http.get("/models", headers={"Origin": "https://evil.example", "X-API-Key": KEYS[0]})
    assert "access-control-allow-origin" not in other.headers


def test_keys_and_token_never_reach_the_log(keyed, http):
    """Every credential is sent here, right and wrong, in both headers; with the module, the log also holds
    all the other tests' requests."""
    for secret in (*KEYS, METRICS_TOKEN):
        http.get("/models", headers={"Authorization": f"Bearer {secret}"})
        http.get("/metrics", headers={"X-API-Key": secret})
    last = f"/the-last-request-{secrets.token_hex(4)}"
    http.get(last)
    assert eventually(lambda: f" {last} " in keyed.log())  # access lines keep their order: the others are written
    log = keyed.log()
    for secret in (*KEYS, METRICS_TOKEN):
        assert secret not in log
        assert secret.split("-")[-1] not in log


def test_without_settings_nothing_is_guarded_and_no_cors_headers_are_sent(client):
    assert client.get("/models").status_code == 200
    assert client.get("/models", headers={"Origin": ORIGIN}).headers.get("access-control-allow-origin") is None
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


@pytest.mark.parametrize("api_keys, metrics_token, path, needed", [
    ([], None, "/models", None),
    ([], None, "/metrics", None),
    ([], "t", "/models", None),
    ([], "t", "/metrics", "the metrics token (YOSO_METRICS_TOKEN)"),
    (["k"], None, "/metrics", "an API key"),
    (["k"], "t", "/metrics/", "the metrics token (YOSO_METRICS_TOKEN)"),
    (["k"], "t", "/detect", "an API key"),
    (["k"], "t", "/healthz/", None),
    (["k"], "t", "/", None),
    (["k"], "t", "/no-such-path", "an API key"),
])
def test_which_credential_each_path_needs(api_keys, metrics_token, path, needed):
    """The rule in full, including the combinations the live server above does not run."""
    required = AccessPolicy(api_keys, metrics_token).required(path)
    assert (required[1] if required else None) == needed
