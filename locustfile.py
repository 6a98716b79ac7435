"""Realistic load for a running yoso server.

    locust -f locustfile.py --headless -u 20 -r 2 -t 2m --host http://localhost:8000 --csv stats/yoso

Each simulated user is a client application: it uploads one image, reads the answer, and pauses before
the next. The mix mirrors how the API is used: mostly counts and JSON detections, fewer annotated images
(the heaviest answer to encode and send), most calls on the default model, some naming another model or
a stricter confidence. Anything but a well-formed 200 counts as a failure, so a shed request (503) or a
timeout (504) shows in the failure column, and locust exits non-zero.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from locust import HttpUser, between, events, task

DEFAULT_IMAGE_DIR = Path(__file__).resolve().parent / "tests" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NAMED_MODEL_SHARE = 0.3
STRICT_CONFIDENCE_SHARE = 0.2
STRICT_CONFIDENCES = (0.6, 0.7, 0.8)
JPEG_MAGIC = b"\xff\xd8"


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    parser.add_argument("--image-dir", default=str(DEFAULT_IMAGE_DIR), help="JPEG/PNG images the users upload.")
    parser.add_argument("--models", default="yolov3-tiny,yolov4-tiny",
                        help="Comma-separated models that some requests name (the rest use the server's default).")
    parser.add_argument("--api-key", default="", env_var="LOCUST_YOSO_API_KEY", is_secret=True,
                        help="Sent as a bearer token when the server sets YOSO_API_KEY.")


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@cache
def load_images(image_dir: str) -> tuple[tuple[str, bytes], ...]:
    """Read once per run: uploads must measure the server, not the load generator's disk."""
    paths = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"locustfile: no .jpg/.png images in {image_dir}; pass --image-dir")
    return tuple((path.name, path.read_bytes()) for path in paths)


class YosoUser(HttpUser):
    wait_time = between(0.5, 3)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.images = load_images(options.image_dir)
        self.models = [name.strip() for name in options.models.split(",") if name.strip()]
        if options.api_key:
            self.client.headers["Authorization"] = f"Bearer {options.api_key}"

    def _upload(self, endpoint: str):
        """POST a random sample image; requests are grouped by endpoint, whatever their query."""
        name, data = random.choice(self.images)
        params: dict[str, str] = {}
        if self.models and random.random() < NAMED_MODEL_SHARE:
            params["model"] = random.choice(self.models)
        if random.random() < STRICT_CONFIDENCE_SHARE:
            params["confidence"] = str(random.choice(STRICT_CONFIDENCES))
        return self.client.post(endpoint, params=params, files={"file": (name, data)}, name=endpoint,
                                catch_response=True)

    def _expect_json(self, endpoint: str, key: str, kind: type) -> None:
        with self._upload(endpoint) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif not isinstance(_json(response).get(key), kind):
                response.failure(f"no {key} in {response.text[:200]}")

    @task(5)
    def count_objects(self) -> None:
        self._expect_json("/count_objects", "items", dict)

    @task(4)
    def detect(self) -> None:
        self._expect_json("/detect", "detections", list)

    @task(1)
    def predict(self) -> None:
        with self._upload("/predict") as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif response.headers.get("content-type") != "image/jpeg" or not response.content.startswith(JPEG_MAGIC):
                response.failure(f"not a JPEG: {response.headers.get('content-type')}")
