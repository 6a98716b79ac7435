"""Model versions, on real server processes over a model repository copied from the installed zoo: a version
dropped in serves within seconds while clients keep sending and none of them sees a failure; a version that
is incomplete or broken is refused with one log line and a metric while the serving one carries on; the layout
before versions is version 1; pinning, SHA256SUMS, POST /admin/models/{name}/reload, a plug-in's own versions
and `yoso models list`. Each test takes the next free version number, so that it holds whatever ran before."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import (EXPECTED_COUNTS, ROOT, LiveServer, eventually, file_field, http_client, image_bytes,
                           scrape, serving, value)
from yoso.model.store import ModelStore
from yoso.model.zoo import ZOO

MODEL = "yolov3-tiny"
CFG, WEIGHTS = f"{MODEL}.cfg", f"{MODEL}.weights"
IMAGE = "dog_person_horse.jpg"
CLIENTS = 4
SWAP_WITHIN_S = 5.0
API_KEY = "versions-test-key"

ANSWER_MODULE = '''
from pathlib import Path

import yoso


class Answer(yoso.Model):
    """Answers every instance with the text of answer.txt, in the directory of the version it serves."""

    @classmethod
    def unavailable(cls, directory: Path | None = None) -> str | None:
        if directory is not None and not (directory / "answer.txt").is_file():
            return f"{directory} has no answer.txt"
        return None

    def setup(self, device: str, directory: Path | None = None) -> None:
        self.answer = (directory / "answer.txt").read_text().strip()

    def predict(self, instances: list) -> list:
        return [self.answer for _ in instances]
'''


# The model repository

def zoo_repository(store: ModelStore, root: Path) -> Path:
    """A model repository holding the installed yolov3-tiny in the layout before versions (its files directly in
    `yolov3-tiny/`), as hard links to the user's files (copies across file systems): never written to."""
    files = store.files(ZOO[MODEL])
    assert files is not None
    home = root / MODEL
    home.mkdir(parents=True)
    for source in (files.cfg, files.weights, files.names):
        try:
            os.link(source, home / source.name)
        except OSError:
            shutil.copyfile(source, home / source.name)
    return root


def next_number(home: Path) -> int:
    return max((int(entry.name) for entry in home.iterdir() if entry.name.isdigit()), default=1) + 1


def drop_atomically(home: Path, number: int, files: dict[str, bytes | Path]) -> Path:
    """Write a version as the docs tell users to: into a hidden directory beside the others, then rename it."""
    staging = home / f".tmp-{number}"
    staging.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, staging / name)
        else:
            (staging / name).write_bytes(content)
    return staging.rename(home / str(number))


def zoo_files(repository: Path) -> dict[str, bytes | Path]:
    """A user's version of yolov3-tiny: the zoo's cfg and weights (so its detections are the zoo's)."""
    return {CFG: repository / MODEL / CFG, WEIGHTS: repository / MODEL / WEIGHTS}


def sha256sums(files: dict[str, bytes]) -> bytes:
    return "".join(f"{hashlib.sha256(content).hexdigest()}  {name}\n" for name, content in files.items()).encode()


# What the server says

def serving_version(http: httpx.Client, model: str = MODEL) -> int:
    return next(entry["version"] for entry in http.get("/models").json()["models"] if entry["name"] == model)


def refused_total(http: httpx.Client, model: str = MODEL) -> float:
    return value(scrape(http), "yoso_model_versions_refused_total", model=model)


def refusal_lines(live: LiveServer, number: int, model: str = MODEL) -> list[str]:
    return [line for line in live.log().splitlines() if f"model {model}: version {number} refused: " in line]


def access_lines(live: LiveServer, number: int) -> list[str]:
    return [line for line in live.log().splitlines()
            if " yoso.access: POST /detect 200 " in line and line.endswith(f" model={MODEL} version={number}")]


def detections(http: httpx.Client) -> list:
    answer = http.post("/detect", files=file_field(image_bytes(IMAGE)))
    assert answer.status_code == 200, answer.text
    return answer.json()["detections"]


def reload(http: httpx.Client, model: str = MODEL) -> dict:
    answer = http.post(f"/admin/models/{model}/reload")
    assert answer.status_code == 200, answer.text
    return answer.json()


class Clients:
    """Plain clients, each sending the image again as soon as it is answered (no retries), every answer kept."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stopping = threading.Event()
        self.answers: list[tuple[int, object]] = []  # (status, detections or what went wrong); 0: no answer
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(CLIENTS)]

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stopping.is_set():
                try:
                    answer = http.post("/detect", files=file_field(image_bytes(IMAGE)))
                except httpx.HTTPError as error:
                    self.answers.append((0, repr(error)))
                    continue
                ok = answer.status_code == 200
                self.answers.append((answer.status_code, answer.json()["detections"] if ok else answer.text))

    def failures(self) -> list[tuple[int, object]]:
        return [(status, what) for status, what in self.answers if status != 200]


@contextmanager
def sending(live: LiveServer) -> Iterator[Clients]:
    clients = Clients(live.url)
    for thread in clients.threads:
        thread.start()
    try:
        assert eventually(lambda: len(clients.answers) >= 2 * CLIENTS), "the clients got no answers"
        yield clients
    finally:
        clients.stopping.set()
        for thread in clients.threads:
            thread.join(60)


def wait_for_answers_by(live: LiveServer, http: httpx.Client, number: int) -> None:
    """Version `number` serves, and has answered a few of the clients' images."""
    assert eventually(lambda: serving_version(http) == number, 2 * SWAP_WITHIN_S), live.log()[-3000:]
    assert eventually(lambda: value(scrape(http), "yoso_version_inputs_total", model=MODEL, version=str(number))
                      >= 2 * CLIENTS, 30), live.log()[-3000:]


def assert_swapped_with_no_failure(live: LiveServer, http: httpx.Client, clients: Clients, number: int,
                                   previous: int, reference: list) -> None:
    """Version `number` took over from `previous` while the clients sent (they have stopped), and answered as
    it did; the old version has left both workers."""
    assert clients.failures() == []
    assert all(found == reference for _, found in clients.answers)  # the same files: the same detections
    assert value(scrape(http), "yoso_model_version", model=MODEL) == number
    assert access_lines(live, number) and access_lines(live, previous)
    assert eventually(lambda: live.log().count(f"model {MODEL}: version {previous} unloaded") == 2), \
        live.log()[-3000:]


# A server reading its repository every half second

@pytest.fixture(scope="module")
def polled_repository(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zoo_repository(model_store, tmp_path_factory.mktemp("polled-repository"))


@pytest.fixture(scope="module")
def polled(polled_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"YOSO_MODEL_DIR": str(polled_repository), "YOSO_MODEL_CLASS": "yoso.model.yolo:Yolov3Tiny",
           "YOSO_MODEL_POLL_S": "0.5", "YOSO_WORKERS": "2"}
    yield from serving(env, tmp_path_factory.mktemp("polled"))


@pytest.fixture()
def http(polled: LiveServer) -> Iterator[httpx.Client]:
    yield from http_client(polled)


def test_files_directly_in_the_models_directory_serve_as_version_1(polled, http):
    entry = next(entry for entry in http.get("/models").json()["models"] if entry["name"] == MODEL)
    assert (entry["version"], entry["versions"]) == (1, [1])
    assert value(scrape(http), "yoso_model_version", model=MODEL) == 1
    for name, expected in EXPECTED_COUNTS[MODEL].items():
        answer = http.post("/count_objects", files=file_field(image_bytes(name)))
        assert answer.json() == {"items": expected}, name
    assert "ready: 2 workers, models yolov3-tiny (version 1, openvino f32)" in polled.log()
    assert eventually(lambda: any(line.endswith(f" model={MODEL} version=1") for line in polled.log().splitlines()))


def test_a_version_renamed_into_place_serves_within_seconds_and_no_request_fails(polled, http, polled_repository):
    home = polled_repository / MODEL
    reference, previous, number = detections(http), serving_version(http), next_number(home)
    with sending(polled) as clients:
        dropped = time.monotonic()
        drop_atomically(home, number, zoo_files(polled_repository))
        assert eventually(lambda: serving_version(http) == number, 2 * SWAP_WITHIN_S), polled.log()[-3000:]
        swapped_s = time.monotonic() - dropped
        wait_for_answers_by(polled, http, number)
    assert swapped_s < SWAP_WITHIN_S
    assert_swapped_with_no_failure(polled, http, clients, number, previous, reference)
    assert f"model {MODEL}: version {number} serves now (was {previous})" in polled.log()
    assert refusal_lines(polled, number) == []


def test_a_version_copied_file_by_file_is_refused_until_complete_then_serves(polled, http, polled_repository):
    home = polled_repository / MODEL
    reference, previous, number = detections(http), serving_version(http), next_number(home)
    weights = (home / WEIGHTS).read_bytes()
    target = home / str(number)
    with sending(polled) as clients:
        target.mkdir()
        shutil.copyfile(home / CFG, target / CFG)
        assert eventually(lambda: any(f"lacks {WEIGHTS}" in line for line in refusal_lines(polled, number))), \
            polled.log()[-3000:]
        with (target / WEIGHTS).open("wb") as copy:  # what a copy still under way leaves
            copy.write(weights[:len(weights) // 2])
            copy.flush()
            assert eventually(lambda: any("truncated" in line for line in refusal_lines(polled, number))), \
                polled.log()[-3000:]
            assert serving_version(http) == previous
            copy.write(weights[len(weights) // 2:])
        wait_for_answers_by(polled, http, number)
    assert_swapped_with_no_failure(polled, http, clients, number, previous, reference)


def assert_refused_once(live: LiveServer, http: httpx.Client, number: int, refused_before: float,
                        why: str) -> str:
    """The version is refused in one ERROR line that says `why`, and counted once; the line, for more checks."""
    assert eventually(lambda: refused_total(http) == refused_before + 1), live.log()[-3000:]
    [line] = refusal_lines(live, number)
    assert " ERROR " in line and why in line and line.endswith("; the serving version carries on"), line
    return line


@pytest.mark.parametrize("broken", ["truncated weights", "a cfg that does not parse",
                                    "a cfg OpenCV cannot load"])
def test_a_broken_version_is_refused_once_and_the_serving_one_carries_on(polled, http, polled_repository, broken):
    home = polled_repository / MODEL
    reference, serving, number = detections(http), serving_version(http), next_number(home)
    refused_before = refused_total(http)
    cfg, weights = (home / CFG).read_text(), (home / WEIGHTS).read_bytes()
    files, why = {
        "truncated weights": ({CFG: cfg.encode(), WEIGHTS: weights[:-4096]}, "truncated"),
        "a cfg that does not parse": ({CFG: b"<html>not found</html>\n", WEIGHTS: weights}, "does not parse"),
        # the size fits, but OpenCV knows no such activation: the workers fail to load it
        "a cfg OpenCV cannot load": ({CFG: cfg.replace("activation=leaky", "activation=sparkly", 1).encode(),
                                      WEIGHTS: weights}, "failed"),
    }[broken]
    drop_atomically(home, number, files)
    line = assert_refused_once(polled, http, number, refused_before, why)
    answer = reload(http)  # a check after the refusal: the version is not tried again until its files change
    assert (answer["model"], answer["version"], answer["previous"]) == (MODEL, serving, serving)
    assert answer["refused"].startswith(f"model {MODEL}: version {number} refused: ") and answer["refused"] in line
    assert len(refusal_lines(polled, number)) == 1 and refused_total(http) == refused_before + 1
    assert serving_version(http) == serving and detections(http) == reference


# A server that reads its repository only when asked, with a plug-in of its own, a pinned zoo model and a key

@pytest.fixture(scope="module")
def pinned_repository(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolov3-tiny at version 1 (the layout before versions) and a complete version 2; answer at version 1."""
    repository = zoo_repository(model_store, tmp_path_factory.mktemp("pinned-repository"))
    drop_atomically(repository / MODEL, 2, zoo_files(repository))
    drop_atomically(repository / "answer", 1, {"answer.txt": b"answer 1\n"})
    return repository


@pytest.fixture(scope="module")
def asked(pinned_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    user = tmp_path_factory.mktemp("user")
    (user / "answers.py").write_text(ANSWER_MODULE)
    env = {"YOSO_MODEL_DIR": str(pinned_repository), "PYTHONPATH": str(user),
           "YOSO_MODEL_CLASS": "yoso.model.yolo:Yolov3Tiny,answers:Answer", "YOSO_PRELOAD_MODELS": f"{MODEL},answer",
           "YOSO_MODEL_VERSIONS": json.dumps({MODEL: 1}), "YOSO_WORKERS": "2", "YOSO_API_KEY": API_KEY}
    yield from serving(env, tmp_path_factory.mktemp("asked"))


@pytest.fixture()
def asked_http(asked: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=asked.url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        yield http


def answers(http: httpx.Client) -> list:
    answer = http.post("/v1/models/answer:predict", json={"instances": [1, 2]})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_a_pinned_version_serves_though_a_higher_one_is_complete(asked, asked_http):
    entry = next(entry for entry in asked_http.get("/models").json()["models"] if entry["name"] == MODEL)
    assert (entry["version"], entry["versions"]) == (1, [1, 2])
    assert reload(asked_http) == {"model": MODEL, "version": 1, "previous": 1, "refused": None}
    assert value(scrape(asked_http), "yoso_model_version", model=MODEL) == 1
    assert asked_http.post("/count_objects", files=file_field(image_bytes(IMAGE))).json() == {
        "items": EXPECTED_COUNTS[MODEL][IMAGE]}
    assert eventually(lambda: any(line.endswith(f" model={MODEL} version=1") and "POST /count_objects 200" in line
                                  for line in asked.log().splitlines()))


def test_a_plugin_is_set_up_with_the_directory_of_its_version_and_a_reload_swaps_it_at_once(
        asked, asked_http, pinned_repository):
    home = pinned_repository / "answer"
    previous, number = serving_version(asked_http, "answer"), next_number(home)
    assert answers(asked_http) == [f"answer {previous}"] * 2
    drop_atomically(home, number, {"answer.txt": f"answer {number}\n".encode()})
    assert answers(asked_http) == [f"answer {previous}"] * 2  # polling is off: nothing changes until asked
    assert reload(asked_http, "answer") == {"model": "answer", "version": number, "previous": previous,
                                            "refused": None}
    assert answers(asked_http) == [f"answer {number}"] * 2
    entry = next(entry for entry in asked_http.get("/models").json()["models"] if entry["name"] == "answer")
    assert entry["version"] == number and entry["versions"][-1] == number
    assert value(scrape(asked_http), "yoso_version_inputs_total", model="answer", version=str(number)) == 2


def test_moving_the_serving_version_aside_rolls_back_to_the_one_below(asked, asked_http, pinned_repository):
    home = pinned_repository / "answer"
    below = serving_version(asked_http, "answer")
    number = next_number(home)
    drop_atomically(home, number, {"answer.txt": f"answer {number}\n".encode()})
    assert reload(asked_http, "answer")["version"] == number
    (home / str(number)).rename(home / f".old-{number}")  # as the docs show: mv 3 .old-3
    assert reload(asked_http, "answer") == {"model": "answer", "version": below, "previous": number,
                                            "refused": None}
    assert answers(asked_http) == [f"answer {below}"] * 2


def test_a_plugin_version_without_the_file_its_class_needs_is_refused(asked, asked_http, pinned_repository):
    home = pinned_repository / "answer"
    serving, number = serving_version(asked_http, "answer"), next_number(home)
    drop_atomically(home, number, {"question.txt": b"?\n"})
    answer = reload(asked_http, "answer")
    assert (answer["version"], answer["previous"]) == (serving, serving)
    assert answer["refused"] == f"model answer: version {number} refused: {home / str(number)} has no answer.txt"
    assert answers(asked_http) == [f"answer {serving}"] * 2


def test_a_version_whose_files_do_not_match_its_sha256sums_is_refused_until_they_do(
        asked, asked_http, pinned_repository):
    home = pinned_repository / "answer"
    serving, number = serving_version(asked_http, "answer"), next_number(home)
    refused_before = refused_total(asked_http, "answer")
    content = f"answer {number}\n".encode()
    target = drop_atomically(home, number, {"answer.txt": content,
                                            "SHA256SUMS": sha256sums({"answer.txt": b"another answer\n"})})
    refused = reload(asked_http, "answer")
    assert (refused["version"], refused["previous"]) == (serving, serving)
    assert "answer.txt does not match its sha256 in SHA256SUMS" in refused["refused"]
    assert refused_total(asked_http, "answer") == refused_before + 1
    assert len(refusal_lines(asked, number, "answer")) == 1
    assert answers(asked_http) == [f"answer {serving}"] * 2

    (target / "SHA256SUMS").write_bytes(sha256sums({"answer.txt": content}))  # fixed: its files changed
    assert reload(asked_http, "answer") == {"model": "answer", "version": number, "previous": serving,
                                            "refused": None}
    assert answers(asked_http) == [f"answer {number}"] * 2


def test_reloading_needs_the_api_key_when_keys_are_set(asked, asked_http):
    serving = serving_version(asked_http)
    refused = httpx.post(f"{asked.url}/admin/models/{MODEL}/reload", timeout=60)
    assert refused.status_code == 401 and "detail" in refused.json()
    assert reload(asked_http) == {"model": MODEL, "version": serving, "previous": serving, "refused": None}


def test_reloading_a_model_that_is_not_served_is_404(asked_http):
    answer = asked_http.post("/admin/models/yolov9/reload")
    assert answer.status_code == 404
    assert answer.json() == {"detail": "Unknown model 'yolov9'. Served models: yolov3-tiny, answer."}


def test_yoso_models_list_shows_the_versions_in_the_repository_and_the_pin(pinned_repository):
    env = {**os.environ, "YOSO_MODEL_DIR": str(pinned_repository), "YOSO_MODEL_VERSIONS": json.dumps({MODEL: 1})}
    listed = subprocess.run([sys.executable, "-m", "yoso", "models", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [line] = [line for line in listed.stdout.splitlines() if line.startswith(MODEL + " ")]
    assert line.endswith("installed  versions 1, 2 (pinned: 1)"), line
