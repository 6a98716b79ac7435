"""Versions from an MLflow Model Registry (YOSO_MODEL_REGISTRY). A real `mlflow server` holds the zoo's
yolov3-tiny files as registered model `detector`; a real yoso serves what its alias `production` names. yoso's
model repository starts as `yoso models pull` leaves it (the zoo's files: version 1), so the registry's versions
arrive as repository versions 2, 3, ...: a registry version and a repository version are two numbers."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import httpx
import pytest

from tests.mlflow_server import MlflowServer, mlflow_serving
from tests.support import EXPECTED_COUNTS, LiveServer, eventually, free_port, image_bytes, scrape, serving, value
from yoso.model.mlflow_registry import CLIENT_DEFAULTS, MlflowRegistry
from yoso.model.registry import RegistryError
from yoso.model.repository import SUMS
from yoso.model.store import ModelStore, sha256_of
from yoso.model.zoo import ZOO

SERVED = "yolov3-tiny"
REGISTERED = "detector"
URI = f"models:/{REGISTERED}@production"
IMAGE = "car2.jpg"
SWAP_S = 60  # a pull over loopback, then a load and warm-up in both workers


@pytest.fixture(scope="module", autouse=True)
def mlflow_environment() -> Iterator[None]:
    """MLflow's client in this process reports nothing, and what MlflowRegistry sets in the environment is
    undone after the module."""
    saved = dict(os.environ)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[MlflowServer]:
    yield from mlflow_serving(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def mlflow_client(registry):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)
    client.create_registered_model(REGISTERED)
    return client


def register(client, files: list[Path]) -> str:
    """A new version of `detector` holding these files (as docs/models.md shows it)."""
    run = client.create_run(experiment_id="0")
    for path in files:
        client.log_artifact(run.info.run_id, str(path), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return client.create_model_version(REGISTERED, source=f"{run.info.artifact_uri}/model",
                                       run_id=run.info.run_id).version


@pytest.fixture(scope="module")
def zoo_files(model_store: ModelStore) -> list[Path]:
    files = model_store.files(ZOO[SERVED])
    return [files.cfg, files.weights]


@pytest.fixture(scope="module")
def version_1(mlflow_client, zoo_files) -> str:
    """The zoo's cfg and weights, registered and aliased `production`."""
    version = register(mlflow_client, zoo_files)
    mlflow_client.set_registered_model_alias(REGISTERED, "production", version)
    return version


@pytest.fixture(scope="module")
def model_dir(model_store: ModelStore, tmp_path_factory) -> Path:
    """A model repository as `yoso models pull yolov3-tiny` leaves it: the zoo's files in `yolov3-tiny/`."""
    directory = tmp_path_factory.mktemp("models")
    (directory / SERVED).mkdir()
    for path in astuple(model_store.files(ZOO[SERVED])):
        (directory / SERVED / path.name).write_bytes(path.read_bytes())
    return directory


@pytest.fixture(scope="module")
def yoso(registry, version_1, model_dir, tmp_path_factory) -> Iterator[LiveServer]:
    env = {"YOSO_MODEL_DIR": str(model_dir), "YOSO_MODEL_CLASS": "yoso.model.yolo:Yolov3Tiny",
           "YOSO_MODEL_REGISTRY": json.dumps({SERVED: URI}), "YOSO_MLFLOW_TRACKING_URI": registry.url,
           "YOSO_MODEL_POLL_S": "1", "YOSO_WORKERS": "2",
           "YOSO_MAX_QUEUE_WAIT_MS": "60000"}  # patient: on a busy machine, no request is shed (shedding has its tests)
    yield from serving(env, tmp_path_factory.mktemp("yoso"))


@pytest.fixture()
def http(yoso: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=yoso.url, timeout=60) as client:
        yield client


def served(http: httpx.Client) -> dict:
    (model,) = [model for model in http.get("/models").json()["models"] if model["name"] == SERVED]
    return model


def pulled_from(model_dir: Path, number: int) -> str:
    """The registry version that repository version `number` was pulled from."""
    return json.loads((model_dir / SERVED / str(number) / ".registry.json").read_text())["source"]


def count_objects(http: httpx.Client) -> httpx.Response:
    return http.post("/count_objects", files={"file": (IMAGE, image_bytes(IMAGE))})


# MlflowRegistry on its own, against the real server.

@pytest.mark.parametrize("uri", [
    "models:/", f"models:/{REGISTERED}", f"models:/{REGISTERED}/", f"models:/{REGISTERED}/0",
    f"models:/{REGISTERED}/latest", f"models:/{REGISTERED}/Production", f"models:/{REGISTERED}@",
    f"models:/{REGISTERED}/1/model", f"models:/{REGISTERED}@production/model", f"models://{REGISTERED}/1",
    f"runs:/0123/{REGISTERED}", f" models:/{REGISTERED}/1",
])
def test_resolve_refuses_a_uri_that_is_neither_a_version_nor_an_alias(registry, uri):
    with pytest.raises(RegistryError, match="use models:/<name>/<version>") as refused:
        MlflowRegistry(registry.url).resolve(uri)
    assert repr(uri) in str(refused.value)


def test_resolve_names_the_version_an_alias_or_a_number_names(registry, version_1):
    mlflow = MlflowRegistry(registry.url)
    assert mlflow.resolve(f"models:/{REGISTERED}@production") == f"models:/{REGISTERED}/{version_1}"
    assert mlflow.resolve(f"models:/{REGISTERED}/{version_1}") == f"models:/{REGISTERED}/{version_1}"


@pytest.mark.parametrize(("uri", "said"), [
    ("models:/nothing@production", "Registered Model with name=nothing not found"),
    (f"models:/{REGISTERED}@staging", "Registered model alias staging not found"),
    (f"models:/{REGISTERED}/99", f"Model Version (name={REGISTERED}, version=99) not found"),
])
def test_resolve_says_in_one_line_what_the_registry_lacks(registry, version_1, uri, said):
    with pytest.raises(RegistryError) as refused:
        MlflowRegistry(registry.url).resolve(uri)
    assert str(refused.value) == f"the MLflow registry at {registry.url} says: {said}"


def test_a_registry_that_is_down_is_one_line_within_seconds():
    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryError) as refused:
        MlflowRegistry(down).resolve(URI)
    assert time.monotonic() - started < 15
    assert str(refused.value).startswith(f"cannot reach the MLflow registry at {down}: [Errno 111] Connection refused")
    assert "\n" not in str(refused.value)


def test_with_no_tracking_server_set_the_registry_says_which_setting_names_it(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RegistryError, match="set YOSO_MLFLOW_TRACKING_URI"):
        MlflowRegistry(None)


def test_the_client_gives_up_fast_and_reports_nothing_unless_the_environment_says_otherwise(registry, monkeypatch):
    for variable in CLIENT_DEFAULTS:
        monkeypatch.setenv(variable, "")  # so that monkeypatch restores each afterwards
        monkeypatch.delenv(variable)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    MlflowRegistry(registry.url)
    assert {variable: os.environ.get(variable) for variable in CLIENT_DEFAULTS} == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_DISABLE_TELEMETRY": "true"}


# yoso following the alias. These run in order: each starts where the one before left the registry.

def test_at_start_the_version_the_alias_names_is_pulled_as_the_next_repository_version_and_serves(
        http, model_dir, version_1):
    model = served(http)
    assert (model["version"], model["versions"]) == (2, [1, 2])
    assert pulled_from(model_dir, 2) == f"models:/{REGISTERED}/{version_1}"
    assert sorted(path.name for path in (model_dir / SERVED / "2").iterdir()) == [
        ".registry.json", f"{SERVED}.cfg", f"{SERVED}.weights"]
    response = count_objects(http)
    assert response.status_code == 200 and response.json()["items"] == EXPECTED_COUNTS[SERVED][IMAGE]
    assert value(scrape(http), "yoso_version_inputs_total", model=SERVED, version="2") == 1


def test_when_the_alias_moves_the_new_version_is_pulled_once_and_swapped_in_with_no_failed_request(
        http, yoso, model_dir, mlflow_client, zoo_files, tmp_path):
    sums = tmp_path / SUMS
    sums.write_text("".join(f"{sha256_of(path)}  {path.name}\n" for path in zoo_files))
    version_2 = register(mlflow_client, [*zoo_files, sums])
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def plain_client() -> None:
        with httpx.Client(base_url=yoso.url, timeout=60) as own:
            while not stop.is_set():
                statuses[count_objects(own).status_code] += 1

    clients = [threading.Thread(target=plain_client) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        mlflow_client.set_registered_model_alias(REGISTERED, "production", version_2)
        assert eventually(lambda: served(http)["version"] == 3, timeout_s=SWAP_S), yoso.log()
        assert eventually(lambda: value(scrape(http), "yoso_version_inputs_total", model=SERVED, version="3") > 0)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert set(statuses) == {200}, statuses
    assert served(http)["versions"] == [1, 2, 3]
    assert pulled_from(model_dir, 3) == f"models:/{REGISTERED}/{version_2}"
    assert (model_dir / SERVED / "3" / SUMS).read_text() == sums.read_text()


def test_when_the_alias_moves_back_the_version_pulled_before_serves_again_with_no_download(
        http, yoso, mlflow_client, version_1):
    mlflow_client.set_registered_model_alias(REGISTERED, "production", version_1)
    assert eventually(lambda: served(http)["version"] == 2, timeout_s=SWAP_S), yoso.log()
    assert served(http)["versions"] == [1, 2, 3]
    assert count_objects(http).status_code == 200


def test_an_alias_that_names_nothing_is_refused_on_reload_and_the_serving_version_carries_on(
        http, mlflow_client, version_1, registry):
    mlflow_client.delete_registered_model_alias(REGISTERED, "production")
    try:
        reloaded = http.post(f"/admin/models/{SERVED}/reload")
        assert reloaded.status_code == 200
        assert reloaded.json() == {
            "model": SERVED, "version": 2, "previous": 2,
            "refused": f"model {SERVED}: cannot pull {URI}: RegistryError: the MLflow registry at {registry.url} "
                       "says: Registered model alias production not found"}
        assert count_objects(http).status_code == 200
        assert served(http)["version"] == 2
    finally:
        mlflow_client.set_registered_model_alias(REGISTERED, "production", version_1)
