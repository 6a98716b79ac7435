"""What the server says about a model: one shape for the service, its HTTP answer (/models) and yosoclient.

Plain data with no dependency, so that the client can share it without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelStatus:
    """A served model: installed (it can load: for the zoo, its files are in YOSO_MODEL_DIR), loaded (held in
    memory by `workers_loaded` worker processes), its number of classes when it declares its labels, what
    `yoso models pull` downloads for it (0 for a plug-in), its kind (detector: images in, detections out;
    json: JSON in, JSON out), the class that serves it (module:Class), the version serving and the versions in
    the model repository, and what runs it: its engine and precision (the zoo's: YOSO_ENGINE and
    YOSO_INFERENCE_PRECISION; a plug-in's: its class's `engine` and `precision`, when it declares them)."""

    name: str
    installed: bool
    loaded: bool
    workers_loaded: int
    classes: int | None
    download_bytes: int
    kind: str = "detector"
    model_class: str = ""
    version: int = 1
    versions: list[int] = field(default_factory=list)
    engine: str = ""
    precision: str = ""
