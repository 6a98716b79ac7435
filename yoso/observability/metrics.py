"""Prometheus metrics on /metrics: HTTP traffic (yoso.observability.http_metrics), inference from an observer.

Every metric lives in a registry of the app's own, not in prometheus_client's global one, so that building
the app twice in one process (tests, dev-mode reload) never fails on duplicated time series. The server is
one process: inference worker processes only send results back, and everything is recorded here, so
/metrics reports every worker without Prometheus' multiprocess mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from yoso.config import METRICS_PATH
from yoso.observability.children import Children
from yoso.observability.deferred import Deferred, DeferredObserver, FlushFirst
from yoso.observability.http_metrics import HttpMetrics
from yoso.serving.admission import Reason
from yoso.serving.pool import Exit
from yoso.serving.service import InferenceService
from yoso.serving.tasks import Interval, JobOutcome, TaskOutcome

# Whole requests: a probe answers in a millisecond, a big image on a busy server takes seconds.
REQUEST_SECONDS_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10)
INFERENCE_SECONDS_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10)
QUEUE_WAIT_SECONDS_BUCKETS = (0.001, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
STAGE_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
MODEL_LOAD_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MEGAPIXELS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 20, 40)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class InferenceMetrics:
    """yoso's own metrics: what the models cost and what they see. A labelled one is called with its label values
    for its child (yoso.observability.children)."""

    def __init__(self, registry: CollectorRegistry, runtimes: dict[str, tuple[str, str]],
                 detectors: Iterable[str]) -> None:
        self.runtimes = runtimes  # each model's (engine, precision): labels of what its speed depends on
        self.inference_seconds = Children(Histogram(
            "yoso_inference_seconds", "The model's steps on one batch, in the worker process, by the engine and "
            "precision that ran them.", ["model", "engine", "precision"], buckets=INFERENCE_SECONDS_BUCKETS,
            registry=registry))
        self.stage_seconds = Children(Histogram(
            "yoso_stage_seconds", "Each step of the model's class on one batch: preprocess, predict, postprocess "
            "(those it defines).", ["model", "stage"], buckets=INFERENCE_SECONDS_BUCKETS, registry=registry))
        self.model_statistic = Children(Summary(
            "yoso_model_statistic", "Figures a model class records of its own (yoso.record).",
            ["model", "statistic"], registry=registry))
        self.instances = Children(Counter(
            "yoso_instances_processed_total", "JSON instances run through a model (yoso.Model).", ["model"],
            registry=registry))
        self.decode_seconds = Histogram(
            "yoso_decode_seconds", "Decoding one uploaded image into pixels.",
            buckets=STAGE_SECONDS_BUCKETS, registry=registry)
        self.annotate_encode_seconds = Histogram(
            "yoso_annotate_encode_seconds", "Drawing the boxes on one image and encoding it as JPEG (/predict).",
            buckets=STAGE_SECONDS_BUCKETS, registry=registry)
        self.version_inputs = Children(Counter(
            "yoso_version_inputs_total", "Images or JSON instances answered, by the model version that ran them.",
            ["model", "version"], registry=registry))
        self.images = Children(Counter(
            "yoso_images_processed_total", "Images run through a model, by route (spelt as the handler label).",
            ["model", "endpoint"], registry=registry))
        self.detections = Children(Counter(
            "yoso_detections_total", "Objects detected, by label.", ["model", "label"], registry=registry))
        self.images_without_detections = Children(Counter(
            "yoso_images_without_detections_total", "Images in which the model found nothing (null predictions).",
            ["model"], registry=registry))
        self.confidence = Children(Histogram(
            "yoso_detection_confidence", "Confidence of each reported detection.", ["model"],
            buckets=CONFIDENCE_BUCKETS, registry=registry))
        self.input_megapixels = Histogram(
            "yoso_input_megapixels", "Size of each decoded input image, in millions of pixels.",
            buckets=MEGAPIXELS_BUCKETS, registry=registry)
        self.model_load_seconds = Children(Histogram(
            "yoso_model_load_seconds", "Loading and warming a model in one worker process.",
            ["model", "engine", "precision"],
            buckets=MODEL_LOAD_SECONDS_BUCKETS, registry=registry))
        self.requests_in_flight = Gauge(
            "yoso_requests_in_flight", "HTTP requests being handled now (/metrics excluded).", registry=registry)
        self.requests_shed = Children(Counter(
            "yoso_requests_shed_total", "Requests refused at once with 503, by reason (yoso.serving.admission).",
            ["reason"], registry=registry))
        self.queue_wait_seconds = Children(Histogram(
            "yoso_queue_wait_seconds", "Time an admitted request waited for a worker, upload arrived to task sent.",
            ["model"], buckets=QUEUE_WAIT_SECONDS_BUCKETS, registry=registry))
        self.workers_replaced = Children(Counter(
            "yoso_workers_replaced_total", "Worker processes replaced: died, hung (a task past its deadline) or "
            "start_timeout (models not loaded within YOSO_STARTUP_TIMEOUT_S).", ["reason"], registry=registry))
        for model, runtime in runtimes.items():  # zero from the start: rate() and ratios work before any request
            self.model_load_seconds(model, *runtime)
            self.inference_seconds(model, *runtime)
            self.queue_wait_seconds(model)
        for model in detectors:
            self.images_without_detections(model)
        for reason in Reason:
            self.requests_shed(reason.value)
        for exit_reason in Exit:
            self.workers_replaced(exit_reason.value)


class MetricsObserver:
    """An InferenceObserver that turns each processed image and each forward pass into metrics."""

    def __init__(self, metrics: InferenceMetrics) -> None:
        self.metrics = metrics

    def image_done(self, model: str, endpoint: str, confidence: float, image: JobOutcome,
                   task: TaskOutcome) -> None:
        m = self.metrics
        m.images(model, endpoint).inc()
        m.version_inputs(model, str(task.version)).inc()
        if image.queue is not None:
            m.queue_wait_seconds(model).observe(_seconds(image.queue))
        m.input_megapixels.observe(image.width * image.height / 1e6)
        if image.decode is not None:
            m.decode_seconds.observe(_seconds(image.decode))
        if image.encode is not None:
            m.annotate_encode_seconds.observe(_seconds(image.encode))
        if not image.detections:
            m.images_without_detections(model).inc()
        for detection in image.detections:
            m.detections(model, detection.label).inc()
            m.confidence(model).observe(detection.confidence)

    def predictions_done(self, model: str, endpoint: str, confidence: float, job: JobOutcome,
                         task: TaskOutcome) -> None:
        m = self.metrics
        if job.queue is not None:
            m.queue_wait_seconds(model).observe(_seconds(job.queue))
        m.instances(model).inc(len(job.predictions or ()))
        m.version_inputs(model, str(task.version)).inc(len(job.predictions or ()))

    def task_done(self, model: str, task: TaskOutcome) -> None:
        """A batch is one run of the model shared by its requests: counted once, even if its callers left."""
        m = self.metrics
        if task.inference is not None:
            m.inference_seconds(model, *m.runtimes[model]).observe(_seconds(task.inference))
        for stage, interval in task.stages:
            m.stage_seconds(model, stage).observe(_seconds(interval))
        for statistic, value in task.records:
            m.model_statistic(model, statistic).observe(value)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.metrics.model_load_seconds(model, *self.metrics.runtimes[model]).observe(seconds)

    def request_shed(self, reason: Reason) -> None:
        self.metrics.requests_shed(reason.value).inc()

    def worker_replaced(self, reason: Exit) -> None:
        self.metrics.workers_replaced(reason.value).inc()


class ServingState(Collector):
    """What the pool, the scheduler and admission hold, read at scrape time: loaded models (the count drops
    when a worker dies), requests waiting for a worker, queued requests given up before inference, refusals
    being held, and how long admission expects each kind of task to take."""

    def __init__(self, service: InferenceService) -> None:
        self.catalog = service.catalog
        self.versions = service.versions
        self.models = list(service.catalog.models)
        self.pool = service.pool
        self.scheduler = service.scheduler
        self.admission = service.admission

    def collect(self) -> Iterable[Metric]:
        waiting = self.scheduler.waiting_by_model()
        yield _per_model_gauge("yoso_model_loaded_workers", "Worker processes holding the model in memory "
                               "(0: not loaded).", self.models, self.pool.workers_with)
        yield _per_model_gauge("yoso_model_version", "The version of the model serving now (the model repository's).",
                               self.models, lambda model: self.catalog.models[model].entry.version)
        refused = CounterMetricFamily("yoso_model_versions_refused", "Versions refused: incomplete, or failed to "
                                      "load or warm in a worker (the serving version carried on).", labels=["model"])
        for model in self.models:
            refused.add_metric([model], self.versions.refusals[model])
        yield refused
        yield _per_model_gauge("yoso_requests_waiting", "Admitted requests waiting for a free worker (or sent ahead "
                               "to a busy one), by model.", self.models, waiting.__getitem__)
        yield CounterMetricFamily("yoso_requests_abandoned",
                                  "Queued requests dropped before inference: their caller left or timed out.",
                                  value=self.scheduler.abandoned)
        yield GaugeMetricFamily("yoso_refusals_held", "Refusals held before their 503 goes out: their client came "
                                "straight back, or refusals come faster than the rate answered at once.",
                                value=self.admission.held)
        expected = GaugeMetricFamily("yoso_task_expected_seconds", "How long admission expects a task to take, "
                                     "learned per model, threads and images (a moving average).",
                                     labels=["model", "threads", "images"])
        for (model, threads, images), seconds in sorted(self.admission.times.known().items()):
            expected.add_metric([model, str(threads), str(images)], seconds)
        yield expected
        yield GaugeMetricFamily("yoso_queue_wait_margin_ratio", "What admission multiplies expected waits by: "
                                "the 99th percentile of what answered callers waited beyond their own task over the "
                                "wait expected, in the last 30 s (1 to 2), as last applied.",
                                value=self.admission.margin.last)


def _per_model_gauge(name: str, documentation: str, models: list[str],
                     value_of: Callable[[str], float]) -> GaugeMetricFamily:
    """One sample for every served model, zero included, so that a model never vanishes from a graph."""
    gauge = GaugeMetricFamily(name, documentation, labels=["model"])
    for model in models:
        gauge.add_metric([model], value_of(model))
    return gauge


def install_metrics(app: FastAPI, service: InferenceService, deferred: Deferred, skip_paths: tuple[str, ...]) -> None:
    """Serve /metrics and record HTTP and inference metrics (skip_paths aside) into a registry of the app's own,
    through `deferred`."""
    disable_created_metrics()  # process-wide: the *_created series double the output and no query here uses them
    registry = app.state.metrics_registry = CollectorRegistry()  # gRPC's metrics join it (grpc_metrics)
    registry.register(FlushFirst(deferred))
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    registry.register(ServingState(service))
    served = service.catalog.models
    metrics = InferenceMetrics(registry, service.catalog.runtimes(),
                               [name for name, model in served.items() if model.is_detector])
    service.observers.append(DeferredObserver(MetricsObserver(metrics), deferred))

    app.add_middleware(HttpMetrics, registry=registry, in_flight=metrics.requests_in_flight,
                       buckets=REQUEST_SECONDS_BUCKETS, deferred=deferred, skip_paths=skip_paths)
    Instrumentator(registry=registry).expose(app, endpoint=METRICS_PATH, include_in_schema=False)


def _seconds(interval: Interval) -> float:
    return (interval[1] - interval[0]) / 1e9
