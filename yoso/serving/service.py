"""The inference service: everything the HTTP layer needs, and nothing of HTTP.

It owns the worker pool and the scheduler, knows which models are installed and loaded, and tells
observers what happened to each image and each task (batch) so that metrics and traces are attached from
outside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from typing import Protocol

from yoso.config import Settings, WorkerPriority
from yoso.cores import available_cores
from yoso.model.detector import read_labels
from yoso.model.store import ModelStore
from yoso.model.zoo import ZOO
from yoso.serving.pool import PoolStartError, WorkerPool
from yoso.serving.scheduler import Scheduler
from yoso.serving.tasks import ImageJob, ImageOutcome, TaskOutcome

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    def __init__(self, name: str, installed: list[str]) -> None:
        super().__init__(
            f"Unknown model {name!r}. Installed models: {', '.join(installed) or 'none'}; "
            f"known models: {', '.join(ZOO)}."
        )


class ModelNotInstalled(LookupError):
    def __init__(self, name: str, store: ModelStore) -> None:
        super().__init__(
            f"Model {name!r} is not installed. Install it with `yoso models pull {name}` "
            f"(or copy its files into {store.model_dir / name}); it loads on first use."
        )


class InferenceObserver(Protocol):
    """Told about every processed image, finished task, model load and shed request (metrics, traces)."""

    def image_done(self, model: str, endpoint: str, confidence: float, image: ImageOutcome,
                   task: TaskOutcome) -> None:
        """Called in the request's context (its span is current), once the image's answer is ready."""

    def task_done(self, model: str, task: TaskOutcome) -> None:
        """Called once per task (a batch shares one), even when every caller has stopped waiting."""

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def request_shed(self) -> None: ...


@dataclass(frozen=True)
class ModelStatus:
    name: str
    installed: bool
    loaded: bool
    workers_loaded: int
    classes: int | None
    download_bytes: int


class InferenceService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_dir)
        self.observers: list[InferenceObserver] = []
        self.pool = WorkerPool(
            size=settings.workers,
            model_dir=self.store.model_dir,
            preload=settings.preload_models,
            cpu_count=available_cores(),
            max_pixels=settings.max_image_pixels,
            idle_priority=settings.worker_priority is WorkerPriority.idle,
        )
        self.pool.on_model_loaded = self._model_loaded
        self.pool.on_task_done = self._task_done
        self.scheduler = Scheduler(
            self.pool,
            max_queue=settings.queue_limit,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_wait_s=None if settings.max_queue_wait_ms is None else settings.max_queue_wait_ms / 1000,
        )
        self.draining = False
        self._started = False
        self._starting: asyncio.Future[None] | None = None
        self._installed: set[str] = set()

    async def start(self) -> None:
        """Check the models now; load and warm them in the background (`ready` turns True after)."""
        self.require_configured()
        self._starting = asyncio.ensure_future(self._start_pool())

    async def _start_pool(self) -> None:
        try:
            await self.pool.start()
        except PoolStartError as error:
            log.critical("could not start the inference workers: %s", error)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not self.draining:
            self._started = True
            log.info("ready: %d workers, models %s", self.pool.size, ", ".join(self.settings.preload_models))

    @property
    def ready(self) -> bool:
        """Models loaded and warmed, not draining, and at least one worker alive to take images."""
        return self._started and not self.draining and self.pool.live > 0

    def drain(self) -> None:
        """Stop reporting ready: load balancers take this replica out while in-flight requests finish."""
        self.draining = True

    async def stop(self) -> None:
        self.drain()
        if self._starting is not None:
            self._starting.cancel()
        await self.pool.stop()

    async def ensure_installed(self, name: str) -> None:
        """`require`, off the event loop the first time: verifying a model hashes its weights (up to 258 MB)."""
        if name not in self._installed:
            await asyncio.to_thread(self.require, name)

    def require_configured(self) -> None:
        """Raise unless the preload models and the default model are all installed."""
        for name in dict.fromkeys([*self.settings.preload_models, self.settings.default_model]):
            self.require(name)

    def require(self, name: str) -> None:
        """Raise unless `name` is a known, installed model (once found installed, it stays so)."""
        if name in self._installed:
            return
        if name not in ZOO:
            raise UnknownModel(name, self.store.installed())
        if not self.store.is_installed(ZOO[name]):
            raise ModelNotInstalled(name, self.store)
        self._installed.add(name)

    async def detect(
        self, model: str, confidence: float, data: bytes, annotate: bool, endpoint: str
    ) -> tuple[ImageOutcome, TaskOutcome]:
        self.require(model)
        image, task = await self.scheduler.run(model, confidence, ImageJob(data, annotate))
        if image.error is None:
            self._notify("image_done", model, endpoint, confidence, image, task)
        return image, task

    def models(self) -> list[ModelStatus]:
        statuses = []
        for name, spec in ZOO.items():
            files = self.store.files(spec)
            classes = len(read_labels(files.names)) if files else None
            loaded_by = self.pool.workers_with(name)
            statuses.append(ModelStatus(name, files is not None, loaded_by > 0, loaded_by, classes, spec.download_bytes))
        return statuses

    def shed(self) -> None:
        """A request was refused for want of capacity (503)."""
        self._notify("request_shed")

    def _model_loaded(self, model: str, seconds: float) -> None:
        self._notify("model_loaded", model, seconds)

    def _task_done(self, model: str, task: TaskOutcome) -> None:
        self._notify("task_done", model, task)

    def _notify(self, event: str, *args: object) -> None:
        """Observers watch; a failing one is logged and never fails the request it watches."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.exception("observer %s failed on %s", type(observer).__name__, event)
