"""The inference service: everything the HTTP layer needs, and nothing of HTTP.

It owns the worker pool, the scheduler in front of it and the admission policy that guards both, knows which
models are served (the catalog), installed and loaded, and tells observers what happened to each request, each
task (batch), each refused request and each replaced worker, so that metrics and traces attach from outside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

from yoso.config import Settings, WorkerPriority
from yoso.cores import available_cores
from yoso.model.registry import pull
from yoso.model.repository import Repository
from yoso.serving.admission import Admission, Reason, Ticket
from yoso.serving.catalog import Catalog, CatalogError
from yoso.serving.pool import Exit, PoolStartError, WorkerPool
from yoso.serving.scheduler import Scheduler
from yoso.serving.versions import Checked, Versions, registry_for
from yoso.serving.tasks import JobOutcome, TaskKind, TaskOutcome, WorkerConfig, WorkerReady
from yoso.status import ModelStatus

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    def __init__(self, name: str, served: list[str]) -> None:
        super().__init__(f"Unknown model {name!r}. Served models: {', '.join(served)}.")


class ModelNotInstalled(LookupError):
    """The model's class says it cannot load now (`unavailable()`): its files are missing, say."""


class InferenceObserver(Protocol):
    """Told about every answered request, finished task, model load, refusal and replaced worker (metrics, traces)."""

    def image_done(self, model: str, endpoint: str, confidence: float, image: JobOutcome,
                   task: TaskOutcome) -> None:
        """Called in the request's context (its span is current), once the image's answer is ready."""

    def predictions_done(self, model: str, endpoint: str, confidence: float, job: JobOutcome,
                         task: TaskOutcome) -> None:
        """The same, for the instances of one request to a JSON model."""

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
        self.repository = Repository(settings.model_dir)
        self.versions = Versions(self.repository, dict(settings.model_versions))
        self._pull_errors: dict[str, str] = {}
        self._pulling: dict[str, asyncio.Lock] = {}
        self.catalog = Catalog.from_settings(settings, self.versions.choose)
        unknown = [name for name in settings.model_registry if name not in self.catalog.models]
        if unknown:
            raise CatalogError(f"bad setting YOSO_MODEL_REGISTRY: unknown model {', '.join(unknown)}; "
                               f"served: {', '.join(self.catalog.models)}")
        for name in settings.model_registry:  # a registry's URI pins its model to the version it names now
            if self._pull(name) is None:
                self.catalog.models[name] = served = self.versions.choose(self.catalog.models[name])
                if settings.preload_models is None and name not in self.catalog.preload and not served.unavailable():
                    self.catalog.preload.append(name)  # it could not load before its first pull
        self.observers: list[InferenceObserver] = []
        cores = available_cores()
        config = WorkerConfig(
            models=self.catalog.entries(),
            preload=self.catalog.preload,
            cores=cores,
            busy_threads=max(1, cores // settings.workers),
            max_pixels=settings.max_image_pixels,
            idle_priority=settings.worker_priority is WorkerPriority.idle,
            log_level=settings.log_level,
            log_format=settings.log_format.value,
            service_name=settings.service_name,
        )
        self.pool = WorkerPool(settings.workers, config, settings.startup_timeout_s)
        self.scheduler = Scheduler(self.pool, settings.max_batch_size, settings.max_batch_delay_ms / 1000)
        self.admission = Admission(
            self.pool, self.scheduler,
            budget_s=settings.max_queue_wait_ms / 1000,
            max_queue=settings.queue_limit,
            max_uploads=settings.max_uploads, request_timeout_s=settings.request_timeout_s,
            busy_threads=config.busy_threads,
            max_batch_size=settings.max_batch_size,
        )
        self.pool.on_ready = self._worker_ready
        self.pool.on_model_loaded = self._model_loaded
        self.pool.on_task_done = self._task_done
        self.pool.on_replaced = lambda reason: self._notify("worker_replaced", reason)
        self.pool.expected_s = self.admission.times.expected_s
        self._watching: asyncio.Future[None] | None = None
        self.scheduler.on_waited = self.admission.waited
        self.start_error: str | None = None
        self._starting: asyncio.Future[None] | None = None
        self._installed: set[str] = set()
        self._labels: dict[str, list[str]] = {}  # what set-up models report, for classes that declare none

    async def start(self) -> None:
        """Check the models now; load and warm them in the background (`ready` turns True after)."""
        self.require_configured()
        self._starting = asyncio.ensure_future(self._start_pool())

    async def _start_pool(self) -> None:
        try:
            await self.pool.start()
        except Exception as error:  # noqa: BLE001 - whatever stops the pool stops the server, in one line
            why = error if isinstance(error, PoolStartError) else f"{type(error).__name__}: {error}"
            self.fail_start(f"could not start the inference workers: {why}")
            return
        if self.admission.closed is Reason.starting:
            self.admission.closed = None
            log.info("ready: %d workers, models %s", self.pool.size, ", ".join(
                f"{name} ({self.catalog.models[name].described})" for name in self.catalog.preload))
        if self.settings.model_poll_s > 0:
            self._watching = asyncio.ensure_future(self._watch(self.settings.model_poll_s))

    async def _watch(self, every_s: float) -> None:
        """Read the model repository every `every_s` and swap in the versions that should serve."""
        while True:
            await asyncio.sleep(every_s)
            for name in list(self.catalog.models):
                try:
                    await self.reload(name)
                except Exception:  # noqa: BLE001 - a failed check is logged; the next one comes
                    log.exception("model %s: checking the model repository failed", name)

    async def reload(self, name: str) -> Checked:
        """Pull model `name` from its registry, if it has one, and read the repository now; swap if another
        version should serve (UnknownModel for a model not served)."""
        if name not in self.catalog.models:
            raise UnknownModel(name, list(self.catalog.models))
        failed = None
        if name in self.settings.model_registry:
            async with self._pulling.setdefault(name, asyncio.Lock()):  # one download of a version, not one per caller
                failed = await asyncio.to_thread(self._pull, name)
        checked = await self.versions.check(self.catalog, self.pool, name)
        if failed is not None:
            checked = replace(checked, refused=failed)
        if checked.version != checked.previous:
            self._installed.discard(name)  # its availability is the new version's
        return checked

    def fail_start(self, why: str) -> None:
        """Something the server needs could not start: it stops, then exits non-zero with this one line."""
        self.start_error = why
        os.kill(os.getpid(), signal.SIGTERM)

    @property
    def draining(self) -> bool:
        return self.admission.closed is Reason.draining

    @property
    def ready(self) -> bool:
        """Models set up and warmed, not draining, and at least one worker alive to take requests."""
        return self.admission.closed is None and self.pool.live > 0

    def drain(self) -> None:
        """Stop reporting ready and admitting: load balancers take this replica out while in-flight requests finish."""
        self.admission.closed = Reason.draining

    async def stop(self) -> None:
        self.drain()
        for background in (self._starting, self._watching):
            if background is not None:
                background.cancel()
        await self.pool.stop()

    async def ensure_installed(self, name: str) -> None:
        """`require`, off the event loop the first time: verifying a model hashes its weights (up to 258 MB)."""
        if name not in self._installed:
            await asyncio.to_thread(self.require, name)

    def require_configured(self) -> None:
        """Raise unless the preload models and the default model are all installed."""
        for name in dict.fromkeys([*self.catalog.preload, self.catalog.default]):
            self.require(name)

    def require(self, name: str) -> None:
        """Raise unless `name` is a served model that can load (once found so, it stays so)."""
        if name in self._installed:
            return
        if (served := self.catalog.models.get(name)) is None:
            raise UnknownModel(name, list(self.catalog.models))
        if (why := served.unavailable()) is not None:
            raise ModelNotInstalled(why)
        self._installed.add(name)

    async def run(self, ticket: Ticket, inputs: Sequence[bytes | list[Any]], endpoint: str, confidence: float = 0.0,
                  annotate: bool = False) -> list[tuple[JobOutcome, TaskOutcome]]:
        """Queue the inputs of an admitted request, once they have arrived (Refused if they may no longer wait),
        and run them: encoded images for a detector (each its own job: the workers share them, or batches hold
        them), or one list of JSON instances for a JSON model. The outcomes come in the order of the inputs."""
        self.require(ticket.model)
        expected_wait_s = self.admission.recheck(ticket, len(inputs))
        queued = [self.scheduler.enqueue(ticket.model, confidence, data, annotate, ticket.hard_deadline,
                                         expected_wait_s) for data in inputs]  # queued now: the next check counts them
        outcomes = await asyncio.gather(*queued, return_exceptions=True)  # cancelled together: none is left to run
        if failed := next((outcome for outcome in outcomes if isinstance(outcome, BaseException)), None):
            raise failed
        self.admission.served(ticket, expected_wait_s)
        for data, (job, task) in zip(inputs, outcomes):  # type: ignore[misc]
            if job.error is None:
                event = "image_done" if isinstance(data, bytes) else "predictions_done"
                self._notify(event, ticket.model, endpoint, confidence, job, task)
        return outcomes  # type: ignore[return-value]

    def _pull(self, name: str) -> str | None:
        """Pin the model to the version its registry URI names now, pulled into the repository if need be;
        why not, if the registry cannot be asked (the version pinned before, if any, stays)."""
        uri = self.settings.model_registry[name]
        try:
            version = pull(self.repository, registry_for(uri, self.settings.mlflow_tracking_uri), name, uri)
        except Exception as error:  # noqa: BLE001 - a registry down or a version gone: say so, serve on
            why = f"model {name}: cannot pull {uri}: {type(error).__name__}: {error}"
            if self._pull_errors.get(name) != why:  # once, not at every poll while the registry stays down
                log.error("%s; the serving version carries on", why)
            self._pull_errors[name] = why
            return why
        self._pull_errors.pop(name, None)
        if self.versions.pinned.get(name) != version.number:
            log.info("model %s: %s is version %d in the repository", name, uri, version.number)
        self.versions.pinned[name] = version.number
        return None

    def models(self) -> list[ModelStatus]:
        statuses = []
        for name, served in self.catalog.models.items():
            loaded_by = self.pool.workers_with(name)
            labels = self.labels(name)
            download = getattr(served.cls, "download_bytes", None)
            statuses.append(ModelStatus(
                name, served.unavailable() is None, loaded_by > 0, loaded_by, len(labels) if labels else None,
                download() if download else 0, served.kind.value, served.entry.target, served.entry.version,
                self.versions.available(name), served.engine, served.precision))
        return statuses

    def model_ready(self, name: str) -> bool:
        """The server is ready and a worker holds the model (KServe V1 and the Open Inference Protocol ask)."""
        return self.ready and self.pool.workers_with(name) > 0

    def labels(self, name: str) -> list[str] | None:
        """The labels a served model can return: its class's, else what its set-up reported, if known."""
        served = self.catalog.models[name]
        return list(served.labels) if served.labels else self._labels.get(name)

    @property
    def log_level(self) -> str:
        """What the workers log at: YOSO_LOG_LEVEL, or the level last set."""
        return self.pool.config.log_level

    def set_log_level(self, level: str) -> None:
        """The workers' log level, now and for every replacement (the server process's own: observability)."""
        self.pool.set_log_level(level)

    def shed(self, reason: Reason) -> None:
        """A request was refused with 503."""
        self._notify("request_shed", reason)

    def _worker_ready(self, ready: WorkerReady) -> None:
        for kind, seconds in ready.warm_task_s.items():
            self.admission.times.seed(kind, seconds)
        self._labels.update({name: labels for name, labels in ready.labels.items() if labels})

    def _model_loaded(self, model: str, seconds: float) -> None:
        self.admission.times.record((model, 0, 0), seconds)  # a worker loading a version is busy that long
        self._notify("model_loaded", model, seconds)

    def _task_done(self, kind: TaskKind, task: TaskOutcome, seconds: float) -> None:
        if task.model_load_s is None and task.inference is not None:  # a typical task: no model load, its inputs read
            self.admission.times.record(kind, seconds)
        self._notify("task_done", kind[0], task)

    def _notify(self, event: str, *args: object) -> None:
        """Observers watch; a failing one is logged and never fails the request it watches."""
        for observer in self.observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                log.exception("observer %s failed on %s", type(observer).__name__, event)
