"""The inference service: everything the HTTP layer needs, and nothing of HTTP.

It owns the worker pool, the scheduler in front of it and the admission policy that guards both, knows which
models are installed and loaded, and tells observers what happened to each image, each task (batch), each
refused request and each replaced worker, so that metrics and traces are attached from outside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Protocol

from yoso.config import Settings, WorkerPriority
from yoso.cores import available_cores
from yoso.model.store import ModelStore, read_labels
from yoso.model.zoo import ZOO
from yoso.serving.admission import Admission, Reason, TaskTimes, Ticket
from yoso.serving.pool import Exit, PoolStartError, WorkerPool
from yoso.serving.scheduler import Scheduler
from yoso.serving.tasks import ImageOutcome, TaskKind, TaskOutcome, WorkerConfig, WorkerReady
from yoso.status import ModelStatus

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
    """Told about every processed image, finished task, model load, refusal and replaced worker (metrics, traces)."""

    def image_done(self, model: str, endpoint: str, confidence: float, image: ImageOutcome,
                   task: TaskOutcome) -> None:
        """Called in the request's context (its span is current), once the image's answer is ready."""

    def task_done(self, model: str, task: TaskOutcome) -> None:
        """Called once per task (a batch shares one), even when every caller has stopped waiting."""

    def model_loaded(self, model: str, seconds: float) -> None: ...

    def request_shed(self, reason: Reason) -> None:
        """Called in the request's context when it is refused with 503."""

    def worker_replaced(self, reason: Exit) -> None:
        """A worker died, hung past its task's deadline or did not start in time, and was replaced."""


class InferenceService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_dir)
        self.observers: list[InferenceObserver] = []
        cores = available_cores()
        config = WorkerConfig(
            model_dir=self.store.model_dir,
            preload=settings.preload_models,
            cores=cores,
            busy_threads=max(1, cores // settings.workers),
            max_pixels=settings.max_image_pixels,
            idle_priority=settings.worker_priority is WorkerPriority.idle,
        )
        self.pool = WorkerPool(settings.workers, config, settings.startup_timeout_s)
        self.scheduler = Scheduler(self.pool, settings.max_batch_size, settings.max_batch_delay_ms / 1000)
        self.admission = Admission(
            self.pool, self.scheduler, TaskTimes(),
            budget_s=settings.max_queue_wait_ms / 1000,
            max_queue=settings.queue_limit,
            max_uploads=settings.max_uploads,
            request_timeout_s=settings.request_timeout_s,
            busy_threads=config.busy_threads,
            max_batch_size=settings.max_batch_size,
        )
        self.pool.on_ready = self._worker_ready
        self.pool.on_model_loaded = self._model_loaded
        self.pool.on_task_done = self._task_done
        self.pool.on_replaced = self._worker_replaced
        self.scheduler.on_waited = self.admission.waited
        self.start_error: str | None = None
        self._starting: asyncio.Future[None] | None = None
        self._installed: set[str] = set()

    async def start(self) -> None:
        """Check the models now; load and warm them in the background (`ready` turns True after)."""
        self.require_configured()
        self._starting = asyncio.ensure_future(self._start_pool())

    async def _start_pool(self) -> None:
        try:
            await self.pool.start()
        except Exception as error:  # noqa: BLE001 - whatever stops the pool stops the server, in one line
            why = error if isinstance(error, PoolStartError) else f"{type(error).__name__}: {error}"
            self.start_error = f"could not start the inference workers: {why}"
            os.kill(os.getpid(), signal.SIGTERM)  # the server stops, then exits non-zero with this line
            return
        if self.admission.closed is Reason.starting:
            self.admission.closed = None
            log.info("ready: %d workers, models %s", self.pool.size, ", ".join(self.settings.preload_models))

    @property
    def draining(self) -> bool:
        return self.admission.closed is Reason.draining

    @property
    def ready(self) -> bool:
        """Models loaded and warmed, not draining, and at least one worker alive to take images."""
        return self.admission.closed is None and self.pool.live > 0

    def drain(self) -> None:
        """Stop reporting ready and admitting: load balancers take this replica out while in-flight requests finish."""
        self.admission.closed = Reason.draining

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

    async def detect(self, ticket: Ticket, confidence: float, data: bytes, annotate: bool,
                     endpoint: str) -> tuple[ImageOutcome, TaskOutcome]:
        """Queue an admitted request whose upload has arrived (Refused if it may no longer wait), and run it."""
        self.require(ticket.model)
        expected_wait_s = self.admission.recheck(ticket)
        image, task = await self.scheduler.run(ticket.model, confidence, data, annotate, ticket.hard_deadline,
                                               expected_wait_s)
        if image.error is None:
            self._notify("image_done", ticket.model, endpoint, confidence, image, task)
        return image, task

    def models(self) -> list[ModelStatus]:
        statuses = []
        for name, spec in ZOO.items():
            files = self.store.files(spec)
            classes = len(read_labels(files.names)) if files else None
            loaded_by = self.pool.workers_with(name)
            statuses.append(ModelStatus(name, files is not None, loaded_by > 0, loaded_by, classes, spec.download_bytes))
        return statuses

    def shed(self, reason: Reason) -> None:
        """A request was refused with 503."""
        self._notify("request_shed", reason)

    def _worker_ready(self, ready: WorkerReady) -> None:
        for kind, seconds in ready.warm_task_s.items():
            self.admission.times.seed(kind, seconds)

    def _model_loaded(self, model: str, seconds: float) -> None:
        self._notify("model_loaded", model, seconds)

    def _task_done(self, kind: TaskKind, task: TaskOutcome, seconds: float) -> None:
        if task.model_load_s is None and task.inference is not None:  # a typical task: no model load, images read
            self.admission.times.record(kind, seconds)
        self._notify("task_done", kind[0], task)

    def _worker_replaced(self, reason: Exit) -> None:
        self._notify("worker_replaced", reason)

    def _notify(self, event: str, *args: object) -> None:
        """Observers watch; a failing one is logged and never fails the request it watches."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.exception("observer %s failed on %s", type(observer).__name__, event)
