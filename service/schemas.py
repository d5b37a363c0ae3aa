"""Request and response schemas of the HTTP API.

Hot routes parse their bodies with orjson and numpy (validating a 784-number list
through pydantic costs ~40% of throughput), so these models document the API in
OpenAPI and are the reference for the tests' schema checks; the routes build the
same shapes by hand.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_EXAMPLE_ROW = [0] * 28


class PixelsRequest(BaseModel):
    """Already MNIST-style images: white ink on black, centred, values 0-255."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"pixels": [_EXAMPLE_ROW] * 28}]},
    )
    pixels: list[list[float]] | list[list[list[float]]] = Field(
        description="one 28x28 array (rows of 28 values) or a list of them; values 0-255"
    )


class ImagesRequest(BaseModel):
    """Encoded images (PNG, JPEG, BMP, WebP, GIF), base64, any size; preprocessed like uploads."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"images": ["iVBORw0KGgo..."]}]})
    images: list[str] = Field(min_length=1, description="base64-encoded image files (a data: URL prefix is accepted)")


class Prediction(BaseModel):
    digit: int = Field(ge=0, description="the predicted class (for MNIST models: the digit)")
    label: str = Field(description="the predicted class's name")
    confidence: float = Field(ge=0, le=1, description="probability of the predicted class")
    probabilities: list[float] = Field(description="probability of each class, in class order")
    input: list[list[float]] | None = Field(
        None, description="the 28x28 image the model saw (only with return_input=true)"
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and what to do")
    error: str = Field(description="the same message (KServe v2 error format)")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    version: str
    architecture: str | None = None
    parameters: int | None = None
    dataset: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    labels: list[str]
    device: str
    sha256: str


class ModelsResponse(BaseModel):
    default_model: str | None
    models: list[ModelInfo]
    failed: dict[str, str] = Field(description="models listed in the manifest that could not be loaded, with why")


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="model name -> 'ready' or the reason it is not")
