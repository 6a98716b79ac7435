"""Response bodies, as the OpenAPI schema documents them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from yoso.status import ModelStatus


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


class ImageError(BaseModel):
    """An image of several that the model could not take; the others are answered all the same."""

    status: int = Field(description="The HTTP status this image alone would have been answered with.")
    detail: str


class DetectResults(BaseModel):
    results: list[DetectResponse | ImageError] = Field(description="One per image, in the order sent.")


class CountResults(BaseModel):
    results: list[CountResponse | ImageError] = Field(description="One per image, in the order sent.")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelStatus]


class HealthResponse(BaseModel):
    status: str
