from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import LiveServer, http_client, serving
from yoso.config import load_settings
from yoso.model.store import ModelStore
from yoso.model.zoo import ZOO

TINY_MODELS = ("yolov3-tiny", "yolov4-tiny")


@pytest.fixture(scope="session")
def model_store() -> ModelStore:
    store = ModelStore(load_settings().model_dir)
    missing = [name for name in TINY_MODELS if not store.is_installed(ZOO[name])]
    if missing:
        pytest.fail(f"models {missing} are not installed in {store.model_dir}: run `make models`")
    return store


@pytest.fixture(scope="session")
def server(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for the whole session: both tiny models preloaded, two workers, a queue deep and
    patient enough that concurrent tests are never shed (shedding has tests of its own)."""
    env = {"YOSO_WORKERS": "2", "YOSO_PRELOAD_MODELS": ",".join(TINY_MODELS), "YOSO_MAX_QUEUE": "256",
           "YOSO_MAX_QUEUE_WAIT_MS": "60000", "YOSO_MAX_UPLOADS": "256"}
    yield from serving(env, tmp_path_factory.mktemp("server"))


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    yield from http_client(server)
