"""yosoclient: call a yoso server from Python (`Client`) or from the shell (`yosoclient`, `python -m yosoclient.cli`)."""

from yosoclient.client import (
    Client,
    DetectResult,
    Detection,
    Health,
    Image,
    ModelInfo,
    ModelsInfo,
    YosoConnectionError,
    YosoError,
    YosoTimeout,
)

__all__ = [
    "Client",
    "DetectResult",
    "Detection",
    "Health",
    "Image",
    "ModelInfo",
    "ModelsInfo",
    "YosoConnectionError",
    "YosoError",
    "YosoTimeout",
]
