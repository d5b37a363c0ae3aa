"""The service's own routes: /predict, /models, health, readiness and metrics. Thin: parse, run, answer."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service import imaging
from service.deps import json_response, registry_of, settings_of
from service.errors import ApiError
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.routing import LeanRoute
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    ImagesRequest,
    ModelsResponse,
    PixelsRequest,
    PredictResponse,
    ReadyResponse,
)
from service.settings import Settings

router = APIRouter(route_class=LeanRoute)
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        404: "unknown model",
        413: "body, image count or decoded image size over the limit",
        415: "unsupported content type",
        422: "undecodable image, blank image, wrong shape, values outside 0-255, or broken JSON",
        503: "queue full or model not loaded (see Retry-After)",
        504: "waited longer than the request timeout",
    }.items()
}

_PREDICT_BODY = {
    "parameters": [
        {"name": "model", "in": "query", "required": False,
         "description": "model name (default: the service's default model)",
         "schema": {"type": "string", "title": "Model"}},
        {"name": "return_input", "in": "query", "required": False,
         "description": "include the 28x28 image the model saw",
         "schema": {"type": "boolean", "default": False, "title": "Return Input"}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [{"$ref": "#/components/schemas/PixelsRequest"},
                                     {"$ref": "#/components/schemas/ImagesRequest"}]},
                "examples": {
                    "pixels": {"summary": "one MNIST-style 28x28 array", "value": {"pixels": [[0] * 28] * 28}},
                    "images": {"summary": "base64-encoded image files", "value": {"images": ["iVBORw0KGgo..."]}},
                },
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                            "description": "one or more image files (repeat the field)"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}





# The one mapping from the imaging package's errors to HTTP statuses (anything else: 422).
IMAGING_STATUS: dict[type[imaging.ImagingError], int] = {imaging.ImageTooLargeError: 413}


def imaging_error(exc: imaging.ImagingError, where: str = "") -> ApiError:
    """An imaging error as the HTTP answer: its status and message, prefixed with `where`."""
    status = next((code for kind, code in IMAGING_STATUS.items() if isinstance(exc, kind)), 422)
    return ApiError(status, f"{where}{exc}")


def _preprocess_all(blobs: list[bytes], max_pixels: int) -> np.ndarray:
    """Encoded images -> float32 [N,1,28,28]; a bad image names its position."""
    out = np.empty((len(blobs), 1, 28, 28), np.float32)
    for i, data in enumerate(blobs):
        try:
            out[i, 0] = imaging.preprocess_image_bytes(data, max_pixels=max_pixels)
        except imaging.ImagingError as exc:
            raise imaging_error(exc, f"image {i}: " if len(blobs) > 1 else "") from None
    return out


_TRUE, _FALSE = frozenset({"true", "1", "yes", "on"}), frozenset({"false", "0", "no", "off", ""})


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise ApiError(422, f"invalid request: query parameter {name}: {value!r} is not a boolean; use true or false")


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise ApiError(422, "no images in the request; send at least one")
    if n > settings.max_images_per_request:
        raise ApiError(413, f"{n} images in one request; the limit is {settings.max_images_per_request}")


def _decode_base64(items: Any) -> list[bytes]:
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(422, '"images" must be a list of base64 strings')
    blobs = []
    for i, text in enumerate(items):
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            blobs.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ApiError(422, f"images[{i}] is not valid base64") from None
    return blobs


async def read_inputs(request: Request, settings: Settings) -> tuple[np.ndarray, float]:
    """Any accepted request body -> (float32 [N,1,28,28] MNIST-style pixels, the event loop's clock when the
    body was in). The request timeout counts from then: image files wait for one of ``decode_threads``,
    and a request still waiting ``request_timeout_s`` after its body was in gets 504."""
    body = await read_body(request, settings, pixels=True)
    if isinstance(body, np.ndarray):
        return body, asyncio.get_running_loop().time()
    return await decode_blobs(_preprocess_all, body, settings)


async def read_body(request: Request, settings: Settings, *, pixels: bool) -> np.ndarray | list[bytes]:
    """The request's images: JSON pixel arrays (float32 [N,1,28,28], only where `pixels`) or the
    encoded files of a JSON, multipart or raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        try:
            doc = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise ApiError(422, f"body is not valid JSON: {exc}") from None
        if not pixels and isinstance(doc, dict) and "pixels" in doc:
            raise ApiError(422, 'this route reads image files: send "images" (base64 image files); a 28x28 '
                                '"pixels" array is one digit, which POST /predict reads')
        if not isinstance(doc, dict) or ("pixels" in doc) == ("images" in doc):
            raise ApiError(422, 'JSON body must be an object with either "pixels" (28x28 arrays) or '
                                '"images" (base64 image files)')
        if "pixels" in doc:
            try:
                x = imaging.pixels_to_batch(doc["pixels"], blank_ok=True)
                _check_count(len(x), settings)  # too many images: 413 before any blank one's 422
                imaging.refuse_blank(x)
            except imaging.ImagingError as exc:
                raise imaging_error(exc) from None
            return x
        blobs = _decode_base64(doc["images"])
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_images_per_request + 1, max_fields=16)
        except StarletteHTTPException as exc:
            if "Too many files" in str(exc.detail):
                raise ApiError(413, f"too many files; the limit is {settings.max_images_per_request}") from None
            raise ApiError(422, f"malformed multipart body: {exc.detail}") from None
        uploads = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not uploads:
            raise ApiError(422, 'multipart body has no image in a field named "file"')
        _check_count(len(uploads), settings)
        blobs = [await f.read() for f in uploads]
        await form.close()
    elif content_type.startswith("image/"):
        blobs = [await request.body()]
    else:
        raise ApiError(
            415,
            f"unsupported content type {content_type or '(none)'!r}; send application/json, "
            "multipart/form-data with a 'file' field, or an image/* body",
        )
    _check_count(len(blobs), settings)
    return blobs


async def decode_blobs(
    decode: Callable[[list[bytes], int], T], blobs: list[bytes], settings: Settings
) -> tuple[T, float]:
    """Run `decode(blobs, max_image_pixels)` in the thread pool -> (its result, the event loop's clock
    when the body was in), or 504 when it waited more than the request timeout."""
    since = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout_at(since + settings.request_timeout_s):
            return await run_in_threadpool(decode, blobs, settings.max_image_pixels), since
    except TimeoutError:
        raise ApiError(504, f"the request waited more than {settings.request_timeout_s:g} s to have its images "
                            "decoded (the server is busy decoding others); retry later") from None


@router.post(
    "/predict",
    summary="Predict the digit in one or more images",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=_PREDICT_BODY,
    tags=["prediction"],
)
async def predict(request: Request) -> Response:
    """Accepts JSON `{"pixels": ...}` (MNIST-style 28x28 arrays), JSON `{"images": [base64...]}`,
    multipart uploads (field `file`, repeatable) or a raw `image/*` body. Uploaded images go through
    the MNIST recipe (see `service/imaging/`). A blank image (no ink) is refused with 422."""
    # Query parameters are read by hand: FastAPI's per-request parameter validation cost more than
    # the model itself. They are documented in _PREDICT_PARAMETERS.
    model = request.query_params.get("model")
    return_input = _flag(request.query_params.get("return_input"), "return_input")
    settings = settings_of(request)
    registry_of(request).get(model).admit()  # unknown model 404, full queue 503: before reading the body
    x, since = await read_inputs(request, settings)
    served = registry_of(request).get(model)  # looked up again: a reload may have swapped it meanwhile
    _, probabilities = await served.infer(x, settings.request_timeout_s, since=since)
    digits = probabilities.argmax(axis=1)
    labels = served.model.labels
    predictions = []
    for i, digit in enumerate(digits.tolist()):
        row = probabilities[i]
        item: dict[str, Any] = {"digit": digit, "label": labels[digit], "confidence": row[digit],
                                "probabilities": row}
        if return_input:
            item["input"] = x[i, 0]
        predictions.append(item)
    return json_response({"model": served.model.name, "version": served.model.version, "predictions": predictions})


@router.get("/models", response_model=ModelsResponse, tags=["models"], summary="The models this service serves")
async def models(request: Request) -> Response:
    registry = registry_of(request)
    return json_response({
        "default_model": registry.default_model,
        "models": [s.model.describe() for s in registry.served.values()],
        "failed": registry.failed,
    })


@router.get("/healthz", response_model=HealthResponse, tags=["health"], summary="Liveness: the process answers")
async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "a model failed to load"}},
    tags=["health"],
    summary="Readiness: every model is loaded, verified and warmed up",
)
async def readyz(request: Request) -> Response:
    registry = registry_of(request)
    return json_response({"ready": registry.ready, "models": registry.status()}, 200 if registry.ready else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics of this process",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


# Registered for the OpenAPI document only: the routes parse bodies themselves (see module docstring).
SCHEMAS = (PixelsRequest, ImagesRequest)
