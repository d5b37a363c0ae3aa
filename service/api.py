"""The service's own routes: /predict, /models, health, readiness and metrics. Thin: parse, run, answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.contract import IMAGE_SHAPE
from service import imaging
from service.deps import json_response, registry_of, settings_of
from service.errors import ImageError, RequestError
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.preprocess_pool import PreprocessPool, WorkerLost
from service.registry import RequestTimeoutError
from service.routing import LeanRoute
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    ImagesRequest,
    ModelsResponse,
    PixelsRequest,
    PredictJson,
    PredictQuery,
    PredictResponse,
    ReadyResponse,
)
from service.security import API_KEY
from service.settings import Settings

router = APIRouter()
_PREDICT_JSON: TypeAdapter[PixelsRequest | ImagesRequest] = TypeAdapter(PredictJson)
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        404: "unknown model (error: unknown_model)",
        413: "body, image count or decoded image size over the limit",
        415: "unsupported content type",
        422: "undecodable image, blank image (error: no_ink), wrong shape, values outside 0-255, or broken JSON",
        503: "queue full (error: queue_full, see Retry-After) or model not loaded",
        504: "waited longer than the request timeout",
    }.items()
}

_PREDICT_BODY = {
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


def _each_image(convert: Callable[..., T], blobs: list[bytes], max_pixels: int) -> list[T]:
    """``convert(data, max_pixels=...)`` for every encoded image; a bad image's error names its position."""
    out = []
    for i, data in enumerate(blobs):
        try:
            out.append(convert(data, max_pixels=max_pixels))
        except imaging.ImagingError as exc:
            raise ImageError(i, len(blobs), exc) from None
    return out


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise RequestError(422, "no_images", "no images in the request; send at least one")
    if n > settings.max_images_per_request:
        raise RequestError(413, "too_many_images",
                           f"{n} images in one request; the limit is {settings.max_images_per_request}")


def _parse_json(body: bytes) -> PixelsRequest | ImagesRequest:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(422, "invalid_json", f"body is not valid JSON: {exc}") from None
    try:
        return _PREDICT_JSON.validate_python(doc)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def read_inputs(request: Request, settings: Settings) -> tuple[np.ndarray, float]:
    """Any accepted request body -> (float32 [N,1,28,28] MNIST-style pixels, the event loop's clock when the
    body was in). The request timeout counts from then: image files may wait for one of ``decode_threads``,
    and a request still waiting ``request_timeout_s`` after its body was in gets 504."""
    body = await read_body(request, settings, pixels=True)
    if isinstance(body, np.ndarray):
        return body, asyncio.get_running_loop().time()
    digits, since = await decode_blobs(request, imaging.preprocess_image_bytes, body)
    return np.stack(digits).reshape(len(digits), *IMAGE_SHAPE), since  # [N,1,28,28]


async def read_body(request: Request, settings: Settings, *, pixels: bool) -> np.ndarray | list[bytes]:
    """The request's images: JSON pixel arrays (float32 [N,1,28,28], only where ``pixels``) or the
    encoded files of a JSON, multipart or raw image body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        doc = _parse_json(await request.body())
        if isinstance(doc, PixelsRequest):
            if not pixels:
                raise RequestError(422, "invalid_request",
                                   'this route reads image files: send "images" (base64 image files); a 28x28 '
                                   '"pixels" array is one digit, which POST /predict reads')
            x = imaging.pixels_to_batch(doc.pixels, blank_ok=True)
            _check_count(len(x), settings)  # too many images: 413 before any blank one's 422
            imaging.refuse_blank(x)
            return x
        blobs = doc.images
    elif content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=settings.max_images_per_request + 1, max_fields=16)
        except StarletteHTTPException as exc:
            if "Too many files" in str(exc.detail):
                raise RequestError(413, "too_many_images",
                                   f"too many files; the limit is {settings.max_images_per_request}") from None
            raise RequestError(422, "invalid_multipart", f"malformed multipart body: {exc.detail}") from None
        uploads = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not uploads:
            raise RequestError(422, "no_images", 'multipart body has no image in a field named "file"')
        _check_count(len(uploads), settings)
        blobs = [await f.read() for f in uploads]
        await form.close()
    elif content_type.startswith("image/"):
        blobs = [await request.body()]
    else:
        raise RequestError(
            415, "unsupported_media_type",
            f"unsupported content type {content_type or '(none)'!r}; send application/json, "
            "multipart/form-data with a 'file' field, or an image/* body",
        )
    _check_count(len(blobs), settings)
    return blobs


def _decode_inline(blobs: list[bytes], budget: int) -> bool:
    """Whether every image is a PNG and their declared pixels add up to at most ``budget``."""
    total = 0
    for data in blobs:
        pixels = imaging.png_pixels(data)
        if pixels is None:
            return False
        total += pixels
        if total > budget:
            return False
    return True


async def decode_blobs(request: Request, convert: Callable[..., T], blobs: list[bytes]) -> tuple[list[T], float]:
    """``convert(data, max_pixels=max_image_pixels)`` for every image -> (the results, the event loop's clock
    when the body was in), or a timeout error when it waited more than the request timeout for a decoding
    thread or worker. A bad image's error names its position (from 1).

    Small PNGs (together at most ``decode_inline_pixels``, by their headers: what a drawing pad sends) are
    decoded on the event loop itself, or, while the loop has other requests to serve, often by a worker
    process (``decode_processes``, see service/preprocess_pool.py); everything else in the decoding threads.
    Preprocessing is many short library calls, each of which lets go of the interpreter and must win it
    back from the event loop, so on a busy server a thread costs a small image more than it gives
    (bench/RESULTS.md); a process has an interpreter of its own."""
    settings = settings_of(request)
    metrics = request.app.state.metrics
    pool: PreprocessPool = request.app.state.preprocess_pool
    since = asyncio.get_running_loop().time()
    if _decode_inline(blobs, settings.decode_inline_pixels):
        if len(blobs) == 1 and pool.take(metrics.in_flight):
            try:
                async with asyncio.timeout_at(since + settings.request_timeout_s):
                    result = await pool.run(convert, blobs[0], settings.max_image_pixels)
            except WorkerLost:
                pass  # preprocessed here instead, below
            except imaging.ImagingError as exc:
                raise ImageError(0, 1, exc) from None
            except TimeoutError:
                raise _timeout(settings, "preprocessed") from None
            else:
                metrics.preprocessed["worker"].inc()
                return [result], since
        metrics.preprocessed["loop"].inc(len(blobs))
        return _each_image(convert, blobs, settings.max_image_pixels), since
    try:
        async with asyncio.timeout_at(since + settings.request_timeout_s):
            results = await run_in_threadpool(_each_image, convert, blobs, settings.max_image_pixels)
    except TimeoutError:
        raise _timeout(settings, "decoded") from None
    metrics.preprocessed["thread"].inc(len(blobs))
    return results, since


def _timeout(settings: Settings, done: str) -> RequestTimeoutError:
    return RequestTimeoutError(f"the request waited more than {settings.request_timeout_s:g} s to have its "
                               f"images {done} (the server is busy with others); retry later")


async def predict(request: Request, query: Annotated[PredictQuery, Query()]) -> Response:
    """Accepts JSON `{"pixels": ...}` (MNIST-style 28x28 arrays), JSON `{"images": [base64...]}`,
    multipart uploads (field `file`, repeatable) or a raw `image/*` body. Uploaded images go through
    the MNIST recipe (see `service/imaging/`). A blank image (no ink) is refused with 422."""
    settings = settings_of(request)
    registry = registry_of(request)
    registry.admit(query.model)  # unknown model 404, full queue 503: before reading the body
    x, since = await read_inputs(request, settings)
    served, (_, probabilities) = await registry.infer(query.model, x, settings.request_timeout_s, since=since)
    digits = probabilities.argmax(axis=1)
    labels = served.model.labels
    predictions = []
    for i, digit in enumerate(digits.tolist()):
        row = probabilities[i]
        item: dict[str, Any] = {"digit": digit, "label": labels[digit], "confidence": row[digit],
                                "probabilities": row}
        if query.return_input:
            item["input"] = x[i, 0]
        predictions.append(item)
    return json_response({"model": served.model.name, "version": served.model.version, "predictions": predictions})


# First in the router (the route most requests take); the key guard declared on the route itself.
router.add_api_route("/predict", predict, methods=["POST"], route_class_override=LeanRoute, dependencies=[API_KEY],
                     summary="Predict the digit in one or more images", response_model=PredictResponse,
                     responses=ERRORS, openapi_extra=_PREDICT_BODY, tags=["prediction"])


@router.get("/models", response_model=ModelsResponse, tags=["models"], summary="The models this service serves")
async def models(request: Request) -> Response:
    registry = registry_of(request)
    return json_response({
        "default_model": registry.default_model,
        "models": [s.model.describe() for s in registry.served.values()],
        "failed": registry.failed,
    })


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


# LeanRoute: probes and load balancers call it often, and FastAPI's machinery costs as much as the answer.
router.add_api_route("/healthz", healthz, methods=["GET"], route_class_override=LeanRoute,
                     response_model=HealthResponse, tags=["health"], summary="Liveness: the process answers")


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


# The JSON bodies of /predict, for the OpenAPI document's components (the route reads its body itself:
# it takes JSON, multipart or a raw image).
SCHEMAS = (PixelsRequest, ImagesRequest)
