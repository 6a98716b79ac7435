"""Response bodies, as the OpenAPI schema documents them."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CountResponse(BaseModel):
    items: dict[str, int] = Field(description="Objects found, per label.", examples=[{"car": 2, "person": 1}])


class DetectionOut(BaseModel):
    label: str
    confidence: float = Field(ge=0, le=1)
    box: list[int] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in pixels.")


class DetectResponse(BaseModel):
    model: str
    confidence: float = Field(description="The confidence threshold applied.")
    width: int
    height: int
    detections: list[DetectionOut]
    inference_ms: float = Field(description="Time the model spent on the batch this image ran in.")


class ModelOut(BaseModel):
    name: str
    installed: bool
    loaded: bool
    workers_loaded: int = Field(description="Worker processes that hold this model in memory.")
    classes: int | None
    download_bytes: int


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelOut]


class HealthResponse(BaseModel):
    status: str
