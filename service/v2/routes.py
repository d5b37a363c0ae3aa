"""The KServe v2 / Open Inference Protocol routes (what Triton clients speak), beside /predict.

Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata), ``/v2/models/{name}``
(model metadata), ``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``, each model route
also under ``/versions/{version}``. Inference goes through the same batcher as /predict.

Implemented extension: ``binary_tensor_data`` (tritonclient.http uses it by default; the codec is
:mod:`core.v2codec`). Outputs asked for with ``parameters.binary_data: true`` (or request-level
``parameters.binary_data_output: true``) come back as bytes after a JSON header.

Input datatypes: FP32 is the model's own; FP16, FP64, INT8/16/32/64 and UINT8/16/32/64 are accepted
and converted to float32 (values must still be raw pixels 0-255). For JSON ``data`` the numbers are
read as numbers whatever the datatype says; the datatype matters for binary data, where it fixes the
element size. BOOL, BYTES and BF16 are refused.

The envelope is validated by the models of :mod:`service.v2.schemas`, the numbers by numpy.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from core import v2codec
from core.contract import INPUT_NAME, OUTPUT_NAMES
from core.v2codec import HEADER_LENGTH
from service import repository
from service.deps import json_response, registry_of, settings_of
from service.errors import RequestError
from service.registry import Served
from service.routing import LeanRoute
from service.security import API_KEY
from service.v2.schemas import (
    IMAGE_SHAPE,
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    V2Error,
)

SERVER_NAME = "digits"
PLATFORM = "onnxruntime_onnx"


class KServeRoute(APIRoute):
    """A v2 route: its errors are answered in the protocol's shape (see service.errors)."""

    kserve_errors = True


class KServeLeanRoute(LeanRoute):
    """A v2 inference route (see service.routing.LeanRoute)."""

    kserve_errors = True


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=KServeRoute)
_REQUEST = TypeAdapter(InferenceRequest)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined, so it can sit inside an OpenAPI operation."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_EXAMPLE_DATA = [0.0] * 784
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": f"JSON; or, with the header `{HEADER_LENGTH}: n`, n bytes of JSON followed by the "
                       "binary tensor data of the inputs that carry `parameters.binary_data_size`.",
        "content": {
            "application/json": {
                "schema": _inline_refs(InferenceRequest.model_json_schema()),
                "examples": {
                    "json": {
                        "summary": "one image as JSON, both outputs as JSON",
                        "value": {"id": "42", "inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28],
                                                          "datatype": "FP32", "data": _EXAMPLE_DATA}]},
                    },
                    "one_output": {
                        "summary": "only the probabilities",
                        "value": {"inputs": [{"name": INPUT_NAME, "shape": [1, 1, 28, 28], "datatype": "FP32",
                                              "data": _EXAMPLE_DATA}],
                                  "outputs": [{"name": "probabilities"}]},
                    },
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": '{"inputs":[{"name":"pixels","shape":[1,1,28,28],"datatype":"UINT8",'
                           '"parameters":{"binary_data_size":784}}],"parameters":{"binary_data_output":true}}'
                           "<784 raw bytes>",
            },
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"JSON; or, when an output was asked for as binary data, a JSON header of "
                       f"`{HEADER_LENGTH}` bytes followed by the outputs' raw little-endian float32 bytes",
        "content": {
            "application/json": {"example": {
                "model_name": "lenet5", "model_version": "1", "id": "42",
                "outputs": [{"name": "probabilities", "shape": [1, 10], "datatype": "FP32",
                             "data": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]}],
            }},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **{
        code: {"model": V2Error, "description": why}
        for code, why in {
            404: "unknown model or version",
            413: "body or image count over the limit",
            415: "compressed request body",
            422: "broken JSON, wrong input name, shape, datatype or data size, values outside 0-255, "
                 "unknown output",
            503: "queue full or model not loaded (see Retry-After)",
            504: "waited longer than the request timeout",
        }.items()
    },
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": V2Error, "description": "unknown model or version"},
    503: {"model": V2Error, "description": "the model failed to load"},
}

ModelName = Annotated[str, Path(description="model name, as listed by GET /models")]
ModelVersion = Annotated[str, Path(description="model version (see the model metadata)")]


# --- helpers -----------------------------------------------------------------------------------------------


def _model_metadata(served: Served) -> dict[str, Any]:
    model = served.model
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *IMAGE_SHAPE]}],
        "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, model.num_classes]} for n in OUTPUT_NAMES],
    }


def _model_ready(request: Request, name: str, version: str | None) -> Response:
    registry = registry_of(request)
    if name in registry.failed:
        why = f"model {name!r} failed to load: {registry.failed[name]}"
        return json_response({"name": name, "ready": False, "error": why}, 503)
    in_manifest = registry.manifest is not None and any(e.name == name for e in registry.manifest.entries)
    if name not in registry.served and in_manifest:
        why = f"model {name!r} is unloaded; load it with POST /v2/repository/models/{name}/load"
        return json_response({"name": name, "ready": False, "error": why}, 503)
    registry.get(name, version)
    return json_response({"name": name, "ready": True})


def _check_range(x: np.ndarray) -> None:
    lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max, so one pass catches it
    if lo >= 0.0 and hi <= 255.0:
        return
    if not np.isfinite(x).all():
        raise v2codec.CodecError(f"input {INPUT_NAME!r} holds NaN or infinite values; send raw pixel values 0-255")
    raise v2codec.CodecError(f"input {INPUT_NAME!r} values must be raw pixels 0-255 (white ink on black, "
                             f"MNIST style); found values from {lo:g} to {hi:g}")


def _parse_request(request: Request, body: bytes) -> tuple[InferenceRequest, np.ndarray]:
    """An infer body -> (its validated envelope, the input as float32 [N,1,28,28])."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise RequestError(415, "unsupported_encoding", f"compressed request bodies (Content-Encoding: {encoding}) "
                                                        "are not supported; send the body uncompressed")
    head, tail = v2codec.split_body(body, request.headers.get(HEADER_LENGTH))
    try:
        raw = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise RequestError(422, "invalid_json", f"body is not valid JSON: {exc}") from None
    try:
        doc = _REQUEST.validate_python(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    (item,) = doc.inputs
    shape = tuple(item.shape)
    limit = settings_of(request).max_images_per_request
    if shape[0] > limit:
        raise RequestError(413, "too_many_images", f"{shape[0]} images in one request; the limit is {limit}")
    size = item.binary_data_size
    if size is None:
        if len(tail):
            raise v2codec.CodecError(f"the body has {len(tail)} binary bytes after the JSON but no input declares "
                                     '"binary_data_size"')
        x = v2codec.tensor_from_json(item.data, shape, name=INPUT_NAME)
    else:
        x = v2codec.tensor_from_binary(tail, size, item.datatype, shape, name=INPUT_NAME)
        if size != len(tail):
            raise v2codec.CodecError(f"the body has {len(tail)} binary bytes but the inputs declare {size}")
    _check_range(x)
    return doc, x


async def _infer(request: Request, name: str, version: str | None) -> Response:
    registry = registry_of(request)
    registry.admit(name, version)  # unknown model 404, full queue 503: before reading the body
    doc, x = _parse_request(request, await request.body())
    served, (logits, probabilities) = await registry.infer(name, x, settings_of(request).request_timeout_s,
                                                           version=version)
    results = {"logits": logits, "probabilities": probabilities}
    header: dict[str, Any] = {"model_name": served.model.name, "model_version": served.model.version}
    if doc.id is not None:
        header["id"] = doc.id
    outputs = [({"name": name, "datatype": "FP32", "shape": list(results[name].shape)},
                results[name].astype("<f4", copy=False), binary) for name, binary in doc.requested_outputs()]
    header["outputs"] = [entry for entry, _, _ in outputs]
    body, length = v2codec.encode(header, outputs)
    if length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})


# --- routes ------------------------------------------------------------------------------------------------


@router.get("/health/live", response_model=Live, summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", response_model=Ready, summary="Readiness: every model is loaded and warmed up",
            responses={503: {"model": Ready, "description": "a model failed to load"}})
async def ready(request: Request) -> Response:
    registry = registry_of(request)
    if registry.ready:
        return json_response({"ready": True})
    problems = "; ".join(f"{n}: {s}" for n, s in registry.status().items() if s != "ready")
    problems = problems or f"the default model {registry.default_model!r} is not loaded"
    return json_response({"ready": False, "error": f"not ready: {problems}"}, 503)


@router.get("", response_model=ServerMetadata, summary="Server metadata: name, version, protocol extensions")
async def server_metadata(request: Request) -> Response:
    extensions = ["binary_tensor_data"]
    if repository.enabled(settings_of(request)):
        extensions.append("model_repository")
    return json_response({"name": SERVER_NAME, "version": request.app.version, "extensions": extensions})


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=_MODEL_ERRORS,
            summary="Model metadata: versions, platform, input and output tensors")
async def model_metadata(request: Request, model_name: ModelName) -> Response:
    return json_response(_model_metadata(registry_of(request).get(model_name)))


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata,
            responses=_MODEL_ERRORS, summary="Model metadata of one version")
async def model_version_metadata(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    return json_response(_model_metadata(registry_of(request).get(model_name, model_version)))


@router.get("/models/{model_name}/ready", response_model=ModelReady, responses=_MODEL_ERRORS,
            summary="Model readiness: 200 when it serves, 503 when it failed to load")
async def model_ready(request: Request, model_name: ModelName) -> Response:
    return _model_ready(request, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=ModelReady,
            responses=_MODEL_ERRORS, summary="Readiness of one model version")
async def model_version_ready(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    return _model_ready(request, model_name, model_version)


_INFER_DOC = """Runs `pixels` (float32 [N, 1, 28, 28], raw MNIST-style pixels 0-255, white ink on black)
through the model and its dynamic batcher; returns `logits` and `probabilities` (FP32 [N, 10]), or only
the outputs named in `outputs`. Supports the binary tensor data extension (see the request body)."""


async def infer(request: Request, model_name: ModelName) -> Response:
    return await _infer(request, model_name, None)


async def infer_version(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    return await _infer(request, model_name, model_version)


for _path, _endpoint, _summary in (("/models/{model_name}/infer", infer, "Inference"),
                                   ("/models/{model_name}/versions/{model_version}/infer", infer_version,
                                    "Inference on one model version")):
    router.add_api_route(_path, _endpoint, methods=["POST"], route_class_override=KServeLeanRoute,
                         dependencies=[API_KEY], response_model=InferenceResponse, responses=_INFER_RESPONSES,
                         openapi_extra=_INFER_BODY, summary=_summary, description=_INFER_DOC)
