"""`yoso check`, a dry run: the settings and the model classes loaded, each preloaded model set up once (a
detector also runs one blank image), and the plan printed: what would serve what, where, and how.

Any problem is one line and exit 1 (a bad setting, a class that cannot be imported, a setup that raises).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from yoso.config import Settings
from yoso.cores import available_cores
from yoso.model.store import sha256_of
from yoso.serving.catalog import Catalog, Kind, ServedModel

LABELS_SHOWN = 6


class CheckFailed(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"yoso check: {message}")


def plan(settings: Settings) -> Iterator[str]:
    """The lines of the plan, each model set up as it is reached; CheckFailed on the first problem."""
    catalog = Catalog.from_settings(settings)
    yield "models:"
    for name, served in catalog.models.items():
        yield from _model(served, set_up=name in catalog.preload)
    preload = ", ".join(catalog.preload) or "none"
    yield f"default model: {catalog.default}; set up in every worker before ready: {preload}"
    cores = available_cores()
    yield (f"workers: {settings.workers} processes on {cores} cores; {cores} threads for a batch that runs alone, "
           f"{max(1, cores // settings.workers)} each while workers are busy")
    yield (f"batching: up to {settings.max_batch_size} requests per batch, waiting at most "
           f"{settings.max_batch_delay_ms:g} ms for company")
    yield (f"admission: a request waits at most {settings.max_queue_wait_ms:g} ms for a worker; at most "
           f"{settings.queue_limit} wait and {settings.max_uploads} upload at once")
    yield f"listening on http://{settings.host}:{settings.port}"
    kinds = {served.kind for served in catalog.models.values()}
    if Kind.detector in kinds:
        yield "  POST /detect, /count_objects, /predict (detectors: ?model=NAME)"
    if Kind.json in kinds:
        yield "  POST /v1/models/{name}:predict (JSON models, KServe V1)"
    yield "  GET /models, /healthz, /readyz, /docs" + (", /metrics" if settings.prometheus_metrics else "")


def _model(served: ServedModel, set_up: bool) -> Iterator[str]:
    cls = served.cls
    labels = served.labels
    shown = "no declared labels"
    if labels:
        more = ", ..." if len(labels) > LABELS_SHOWN else ""
        shown = f"{len(labels)} label{'s' if len(labels) > 1 else ''}: {', '.join(labels[:LABELS_SHOWN])}{more}"
    engine = f"{served.engine} {served.precision}".strip() or "its own"
    yield f"  {served.name}: {served.entry.target}, a {served.kind.value} model; {shown}; engine {engine}"
    if served.entry.args:
        yield f"    arguments: {served.entry.args}"
    why = served.unavailable()
    if why is not None:
        yield f"    not available now, served once it is: {why}"
        return
    for path in _files(served):
        try:
            yield f"    file {path} ({path.stat().st_size:,} bytes) sha256 {sha256_of(path)}"
        except OSError as error:
            raise CheckFailed(f"{served.name}: cannot read {path}: {error.strerror or error}") from None
    if set_up:
        yield f"    {_set_up(served)}"


def _files(served: ServedModel) -> list[Path]:
    """The files the class says it loads (`files()`), and any argument that names a file."""
    declared = getattr(served.cls, "files", None)
    try:
        paths = list(declared()) if declared else []
    except Exception as error:  # noqa: BLE001 - the user's code: one line
        raise CheckFailed(f"{served.name}: files() raised {type(error).__name__}: {error}") from None
    paths += [Path(value) for value in served.entry.args.values() if isinstance(value, str) and Path(value).is_file()]
    return [Path(path) for path in dict.fromkeys(paths)]


def _set_up(served: ServedModel) -> str:
    from yoso.serving.runner import ModelError
    from yoso.serving.worker import DEVICE, ModelCache

    cache = ModelCache({served.name: served.entry}, {1})
    started = time.perf_counter()
    try:
        cache.load(served.entry)
    except ModelError as error:  # the class's own failure, already named
        raise CheckFailed(str(error)) from None
    except Exception as error:  # noqa: BLE001 - its warm-up, say: whatever the user's code raises is one line
        raise CheckFailed(f"model {served.name}: {type(error).__name__}: {error}") from None
    ran = " and ran a blank image" if served.is_detector else ""
    return f"set up on {DEVICE}{ran} in {time.perf_counter() - started:.2f} s"
