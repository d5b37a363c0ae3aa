"""POST /read: whole handwritten numbers. Each image is cut into its digits (service/imaging/
segment.py), every digit of the request goes to the model in one batch through the batcher, and
each image comes back as the number it shows, digits left to right with their boxes."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from service import imaging
from service.api import ERRORS, decode_blobs, read_body
from service.deps import json_response, registry_of, settings_of
from service.routing import LeanRoute
from service.security import API_KEY

router = APIRouter()


class ReadQuery(BaseModel):
    """The query parameters of POST /read."""

    model: str | None = Field(None, description="model name (default: the service's default model)")


class Box(BaseModel):
    x: int = Field(ge=0, description="left edge, in the uploaded image's pixels")
    y: int = Field(ge=0, description="top edge, in the uploaded image's pixels")
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class DigitReading(BaseModel):
    digit: int = Field(ge=0, description="the predicted digit")
    confidence: float = Field(ge=0, le=1, description="probability of the predicted digit")
    probabilities: list[float] = Field(description="probability of each class, in class order")
    box: Box


class Reading(BaseModel):
    text: str = Field(description="the number: the digits' predictions left to right", examples=["2026"])
    confidence: float = Field(ge=0, le=1, description="the product of the digits' confidences")
    digits: list[DigitReading]


class ReadResponse(BaseModel):
    model: str
    version: str
    readings: list[Reading] = Field(description="one reading per image, in request order")


_EXAMPLE = {
    "model": "lenet5", "version": "1",
    "readings": [{"text": "42", "confidence": 0.998, "digits": [
        {"digit": 4, "confidence": 0.999, "probabilities": [0.0] * 4 + [0.999] + [0.0] * 5,
         "box": {"x": 12, "y": 30, "width": 60, "height": 90}},
        {"digit": 2, "confidence": 0.999, "probabilities": [0.0] * 2 + [0.999] + [0.0] * 7,
         "box": {"x": 90, "y": 28, "width": 58, "height": 88}},
    ]}],
}

_READ_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                            "description": "one or more images of numbers (repeat the field)"}},
                }
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ImagesRequest"},
                "examples": {"images": {"summary": "base64-encoded image files",
                                        "value": {"images": ["iVBORw0KGgo..."]}}},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


async def read(request: Request, query: Annotated[ReadQuery, Query()]) -> Response:
    """Accepts the images `/predict` does (multipart `file` fields, a raw `image/*` body, JSON
    `{"images": [base64...]}`) and reads each as a number of one or more digits: the ink is cut into
    digits (pieces sharing columns are one digit, so a 5 or a 7 drawn in two strokes stays whole;
    touching digits are cut where the ink is thinnest, best effort), each goes through the MNIST
    recipe, and all digits of the request are predicted in one batch. A blank image is refused with 422."""
    settings = settings_of(request)
    registry = registry_of(request)
    registry.admit(query.model)  # unknown model 404, full queue 503: before reading the body
    blobs = await read_body(request, settings, pixels=False)  # pixels=False: encoded files only
    images, since = await decode_blobs(request, imaging.read_number_bytes, list(blobs))
    x = np.stack([digit.pixels for digits in images for digit in digits])[:, None]  # [D,1,28,28]
    served, (_, probabilities) = await registry.infer(query.model, x, settings.request_timeout_s, since=since)
    readings: list[dict[str, Any]] = []
    start = 0
    for digits in images:
        rows = probabilities[start : start + len(digits)]
        start += len(digits)
        predicted = rows.argmax(axis=1)
        confidences = rows[np.arange(len(digits)), predicted]
        readings.append({
            "text": "".join(served.model.labels[d] for d in predicted.tolist()),
            "confidence": float(np.prod(confidences, dtype=np.float64)),
            "digits": [
                {"digit": d, "confidence": rows[k, d], "probabilities": rows[k],
                 "box": dict(zip(("x", "y", "width", "height"), digit.box, strict=True))}
                for k, (d, digit) in enumerate(zip(predicted.tolist(), digits, strict=True))
            ],
        })
    return json_response({"model": served.model.name, "version": served.model.version, "readings": readings})


# The key guard declared on the route itself, as for /predict.
router.add_api_route("/read", read, methods=["POST"], route_class_override=LeanRoute, dependencies=[API_KEY],
                     summary="Read the handwritten number in one or more images", response_model=ReadResponse,
                     responses={**ERRORS, 200: {"content": {"application/json": {"example": _EXAMPLE}}}},
                     openapi_extra=_READ_BODY, tags=["prediction"])
