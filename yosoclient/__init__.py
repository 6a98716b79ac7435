"""yosoclient: call a yoso server from Python (`Client`) or the shell (`yosoclient`, `python -m yosoclient.cli`)."""

from yosoclient.client import (
    AnnotatedImage,
    Client,
    Detection,
    DetectResult,
    Health,
    Image,
    ModelInfo,
    ModelsInfo,
    ModelStatus,
    YosoConnectionError,
    YosoError,
    YosoTimeout,
)

__all__ = [
    "AnnotatedImage",
    "Client",
    "Detection",
    "DetectResult",
    "Health",
    "Image",
    "ModelInfo",
    "ModelsInfo",
    "ModelStatus",
    "YosoConnectionError",
    "YosoError",
    "YosoTimeout",
]
