"""Request and response schemas of the HTTP API: they validate requests and generate the OpenAPI document.

The JSON bodies of /predict are validated by ``PredictJson`` (a ``TypeAdapter`` over orjson's output);
the pixel values themselves pass through as they came and numpy converts them (validating a 784-number
list through pydantic costs ~40% of throughput). A validator's message is the one the client sees.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag, WithJsonSchema, field_validator

_EXAMPLE_ROW: list[JsonValue] = [0] * 28

PixelArrays = Annotated[Any, WithJsonSchema({
    "anyOf": [
        {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}},
    ],
    "description": "one 28x28 array (rows of 28 values) or a list of them; values 0-255",
})]


class PredictQuery(BaseModel):
    """The query parameters of POST /predict."""

    model: str | None = Field(None, description="model name (default: the service's default model)")
    return_input: bool = Field(False, description="include the 28x28 image the model saw")


class PixelsRequest(BaseModel):
    """Already MNIST-style images: white ink on black, centred, values 0-255."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"pixels": [_EXAMPLE_ROW] * 28}]},
    )
    pixels: PixelArrays


class ImagesRequest(BaseModel):
    """Encoded images (PNG, JPEG, BMP, WebP, GIF), base64, any size; preprocessed like uploads."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"images": ["iVBORw0KGgo..."]}]})
    images: Annotated[list[bytes], WithJsonSchema({
        "type": "array", "items": {"type": "string", "contentEncoding": "base64"}, "minItems": 1,
        "description": "base64-encoded image files (a data: URL prefix is accepted)",
    })]

    @field_validator("images", mode="before")
    @classmethod
    def _decode(cls, items: Any) -> list[bytes]:
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise ValueError('"images" must be a list of base64 strings')
        blobs = []
        for i, text in enumerate(items):
            if text.startswith("data:"):
                text = text.partition(",")[2]
            try:
                blobs.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise ValueError(f"images[{i}] is not valid base64") from None
        return blobs


def _json_kind(doc: Any) -> str | None:
    if isinstance(doc, dict) and ("pixels" in doc) != ("images" in doc):
        return "pixels" if "pixels" in doc else "images"
    return None


PredictJson = Annotated[
    Annotated[PixelsRequest, Tag("pixels")] | Annotated[ImagesRequest, Tag("images")],
    Discriminator(_json_kind, custom_error_type="invalid_body",
                  custom_error_message='JSON body must be an object with either "pixels" (28x28 arrays) or '
                                       '"images" (base64 image files)'),
]


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
    error: str = Field(description="machine-readable: no_ink, queue_full, unknown_model, bad_image, ... (see README)")


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
