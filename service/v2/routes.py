"""The KServe v2 / Open Inference Protocol REST surface (what Triton clients speak), beside /predict.

Routes: ``/v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata), ``/v2/models/{name}``
(model metadata), ``/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``, each model route
also under ``/versions/{version}``. Inference goes through the same batcher as /predict.

Implemented extension: ``binary_tensor_data`` (tritonclient.http uses it by default). With the header
``Inference-Header-Content-Length: n`` the body is n bytes of JSON, then the raw little-endian tensor
bytes of every input whose ``parameters.binary_data_size`` is set, in input order. Outputs asked for
with ``parameters.binary_data: true`` (or request-level ``parameters.binary_data_output: true``) come
back the same way: a JSON header whose outputs carry ``binary_data_size`` instead of ``data``, then
their bytes, with the response header ``Inference-Header-Content-Length``.

Input datatypes: FP32 is the model's own; FP16, FP64, INT8/16/32/64 and UINT8/16/32/64 are accepted
and converted to float32 (values must still be raw pixels 0-255). For JSON ``data`` the numbers are
read as numbers whatever the datatype says; the datatype matters for binary data, where it fixes the
element size. BOOL, BYTES and BF16 are refused.

Bodies are parsed by hand (orjson + numpy): validating thousands of pixel values through pydantic
costs a large share of throughput. The pydantic models below only document the API in OpenAPI.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Match

from service.deps import json_response, registry_of, settings_of
from service.errors import ApiError
from service.registry import Served
from service.routing import LeanRoute
from service.runtime import INPUT_NAME, OUTPUT_NAMES
from service.schemas import ErrorResponse
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=LeanRoute)

SERVER_NAME = "digits"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_SHAPE = (1, 28, 28)

# Datatype -> little-endian numpy dtype of its binary form.
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "FP32": "<f4", "FP16": "<f2", "FP64": "<f8",
        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    }.items()
}


# --- documentation-only schemas ----------------------------------------------------------------------------


class TensorParameters(BaseModel):
    binary_data_size: int | None = Field(
        None, ge=0, description="binary tensor data extension: the tensor's bytes follow the JSON header"
    )


class RequestInput(BaseModel):
    name: str = Field(description=f'must be "{INPUT_NAME}"')
    shape: list[int] = Field(description="[N, 1, 28, 28]")
    datatype: str = Field(description="FP32 (also FP16, FP64, INT8-64, UINT8-64: converted to float32)")
    parameters: TensorParameters | None = None
    data: list[Any] | None = Field(
        None, description="N*784 numbers 0-255 (raw MNIST-style pixels, white ink on black), flat or nested "
                          "row-major; absent when sent as binary data"
    )


class OutputParameters(BaseModel):
    binary_data: bool | None = Field(None, description="return this output as binary data")


class RequestOutput(BaseModel):
    name: str = Field(description=" or ".join(f'"{n}"' for n in OUTPUT_NAMES))
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: bool | None = Field(None, description="return every output as binary data")


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: RequestParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to return (default: all)")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int] = Field(description="[N, 10]")
    datatype: str = "FP32"
    parameters: TensorParameters | None = None
    data: list[float] | None = Field(None, description="row-major; absent when returned as binary data")


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any batch size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool
    error: str | None = Field(None, description="why not, when not ready")


class ModelReady(BaseModel):
    name: str
    ready: bool
    error: str | None = Field(None, description="why not, when not ready")


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

    return resolve(schema)  # type: ignore[no-any-return]


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
        code: {"model": ErrorResponse, "description": why}
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
    404: {"model": ErrorResponse, "description": "unknown model or version"},
    503: {"model": ErrorResponse, "description": "the model failed to load"},
}

ModelName = Annotated[str, Path(description="model name, as listed by GET /models")]
ModelVersion = Annotated[str, Path(description="model version (see the model metadata)")]


# --- helpers -----------------------------------------------------------------------------------------------





def _served(request: Request, name: str, version: str | None) -> Served:
    """The model called ``name`` (404 with the choices), at ``version`` when one is given (404 otherwise)."""
    served = registry_of(request).get(name)
    if version is not None and version != served.model.version:
        raise ApiError(404, f"model {name!r} has no version {version!r}; available versions: "
                            f"{served.model.version} (or leave the version out of the path)")
    return served


def _routes_to(app: Starlette, method: str, path: str) -> bool:
    """Whether ``app`` has a route for ``method path`` (asked of the router: FastAPI keeps included
    routers whole, so ``app.routes`` does not list their paths)."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


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
    _served(request, name, version)
    return json_response({"name": name, "ready": True})


def _split_body(request: Request, body: bytes) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) of an infer body, per ``Inference-Header-Content-Length``."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(415, f"compressed request bodies (Content-Encoding: {encoding}) are not supported; "
                            "send the body uncompressed")
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        return body, memoryview(b"")
    try:
        n = int(declared)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise ApiError(422, f"header {HEADER_LENGTH}: {declared!r} must be the byte length of the JSON part, "
                            f"between 0 and the body's {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(422, f"{what} must be a JSON object")
    return value


def _shape(item: dict[str, Any], settings: Settings) -> tuple[int, ...]:
    shape = item.get("shape")
    expected = "[N, 1, 28, 28] (N images of 1x28x28)"
    if (not isinstance(shape, list) or len(shape) != 4
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or tuple(shape[1:]) != IMAGE_SHAPE):
        raise ApiError(422, f"input {INPUT_NAME!r} has shape {shape!r}; expected {expected}")
    n = shape[0]
    if n < 1:
        raise ApiError(422, f"input {INPUT_NAME!r} has shape {shape}: N must be at least 1")
    if n > settings.max_images_per_request:
        raise ApiError(413, f"{n} images in one request; the limit is {settings.max_images_per_request}")
    return tuple(shape)


def _tensor_fromjson_response(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(data, list):
        raise ApiError(422, f'input {INPUT_NAME!r}: "data" must be a list of numbers (flat or nested '
                            'row-major), or send the tensor as binary data ("parameters": '
                            '{"binary_data_size": ...})')
    try:
        # No dtype: numpy infers it, so strings, booleans or nulls show up as a non-numeric dtype below
        # instead of being converted silently.
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise ApiError(422, f'input {INPUT_NAME!r}: "data" is ragged: nested lists must all have the same '
                            "length") from None
    if array.dtype.kind not in "iuf":
        raise ApiError(422, f'input {INPUT_NAME!r}: "data" must hold only numbers; found '
                            f"{_first_non_number(data)}")
    expected = math.prod(shape)
    if array.size != expected:
        raise ApiError(422, f'input {INPUT_NAME!r}: "data" has {array.size} values but shape {list(shape)} '
                            f"needs {expected}")
    with np.errstate(over="ignore"):  # 1e300 becomes inf here and is refused by the range check
        return array.astype(np.float32, copy=False).reshape(shape)


def _first_non_number(data: Any) -> str:
    """The first value of (nested) ``data`` that is not a number, for the error message."""
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if isinstance(value, bool) or not isinstance(value, int | float):
                return orjson.dumps(value).decode()[:40]
        else:
            stack.pop()
    return "a value numpy cannot read as a number"


def _tensor_from_binary(tail: memoryview, size: Any, dtype: np.dtype, datatype: str,
                        shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if not isinstance(size, int) or isinstance(size, bool) or size != expected:
        raise ApiError(422, f"input {INPUT_NAME!r}: binary_data_size is {size!r} but shape {list(shape)} of "
                            f"{datatype} needs {expected} bytes")
    if size > len(tail):
        raise ApiError(422, f"input {INPUT_NAME!r}: binary_data_size is {size} but the body has only "
                            f"{len(tail)} bytes after the JSON part; check {HEADER_LENGTH}")
    # astype copies into aligned, native float32 memory (the tail may start at any byte offset).
    return np.frombuffer(tail, dtype=dtype, count=math.prod(shape)).astype(np.float32).reshape(shape)


def _check_range(x: np.ndarray) -> None:
    lo, hi = float(x.min()), float(x.max())  # NaN propagates through min/max, so one pass catches it
    if lo >= 0.0 and hi <= 255.0:
        return
    if not np.isfinite(x).all():
        raise ApiError(422, f"input {INPUT_NAME!r} holds NaN or infinite values; send raw pixel values 0-255")
    raise ApiError(422, f"input {INPUT_NAME!r} values must be raw pixels 0-255 (white ink on black, "
                        f"MNIST style); found values from {lo:g} to {hi:g}")


def _read_input(doc: dict[str, Any], tail: memoryview, settings: Settings) -> np.ndarray:
    """The request's one input -> float32 [N,1,28,28]."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise ApiError(422, f'"inputs" must be a list holding one tensor object named {INPUT_NAME!r}')
    names = [i.get("name") for i in inputs]
    if names != [INPUT_NAME]:
        raise ApiError(422, f"inputs are {names}; this model takes exactly one input, {INPUT_NAME!r} "
                            "(FP32 [N, 1, 28, 28])")
    (item,) = inputs
    shape = _shape(item, settings)
    datatype = item.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise ApiError(422, f"input {INPUT_NAME!r} has datatype {datatype!r}; use FP32 (or one of "
                            f"{', '.join(DATATYPES)})")
    parameters = _object(item.get("parameters"), f"input {INPUT_NAME!r} parameters")
    size = parameters.get("binary_data_size")
    if size is None:
        if len(tail):
            raise ApiError(422, f"the body has {len(tail)} binary bytes after the JSON but no input declares "
                                '"binary_data_size"')
        x = _tensor_fromjson_response(item.get("data"), shape)
    else:
        if "data" in item:
            raise ApiError(422, f'input {INPUT_NAME!r} has both "data" and "binary_data_size"; send one')
        x = _tensor_from_binary(tail, size, dtype, datatype, shape)
        if size != len(tail):
            raise ApiError(422, f"the body has {len(tail)} binary bytes but the inputs declare {size}")
    _check_range(x)
    return x


def _requested_outputs(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """(output name, as binary) for each output to return, in the requested order."""
    parameters = _object(doc.get("parameters"), '"parameters"')
    binary_default = parameters.get("binary_data_output", False) is True
    outputs = doc.get("outputs")
    if outputs is None or outputs == []:  # as tritonclient means it: no outputs named, all of them
        return [(name, binary_default) for name in OUTPUT_NAMES]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ApiError(422, '"outputs" must be a list of objects like {"name": "probabilities"}')
    chosen = []
    for out in outputs:
        name = out.get("name")
        if name not in OUTPUT_NAMES:
            known = ", ".join(map(repr, OUTPUT_NAMES))
            raise ApiError(422, f"unknown output {name!r}; this model has {known}")
        params = _object(out.get("parameters"), f"output {name!r} parameters")
        if "classification" in params:
            raise ApiError(422, "the classification extension is not supported; ask for 'probabilities' "
                                "and take the argmax")
        chosen.append((name, params.get("binary_data", binary_default) is True))
    return chosen


def _infer_response(doc: dict[str, Any], served: Served, results: dict[str, np.ndarray],
                    chosen: list[tuple[str, bool]]) -> Response:
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        array = results[name]  # float32 [N, C]
        out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            blob = array.astype("<f4", copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = array.ravel()
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": served.model.name, "model_version": served.model.version}
    if "id" in doc:
        answer["id"] = doc["id"]
    answer["outputs"] = outputs
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


async def _infer(request: Request, name: str, version: str | None) -> Response:
    settings = settings_of(request)
    _served(request, name, version).admit()  # unknown model 404, full queue 503: before reading the body
    body = await request.body()
    # Looked up again after the last await before submitting, so a model reloaded meanwhile is not missed.
    served = _served(request, name, version)
    head, tail = _split_body(request, body)
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ApiError(422, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, 'the body must be a JSON object like {"inputs": [{"name": "pixels", ...}]}')
    if "id" in doc and not isinstance(doc["id"], str):
        raise ApiError(422, '"id" must be a string')
    chosen = _requested_outputs(doc)
    x = _read_input(doc, tail, settings)
    logits, probabilities = await served.infer(x, settings.request_timeout_s)
    return _infer_response(doc, served, {"logits": logits, "probabilities": probabilities}, chosen)


# --- routes ------------------------------------------------------------------------------------------------


@router.get("/health/live", response_model=Live, summary="Liveness: the process answers")
async def live(request: Request) -> Response:
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
    extensions = list(EXTENSIONS)
    # The model repository routes exist only when the app mounts them (behind an API key).
    if _routes_to(request.app, "POST", "/v2/repository/index"):
        extensions.append("model_repository")
    return json_response({"name": SERVER_NAME, "version": request.app.version, "extensions": extensions})


@router.get("/models/{model_name}", response_model=ModelMetadata, responses=_MODEL_ERRORS,
            summary="Model metadata: versions, platform, input and output tensors")
async def model_metadata(request: Request, model_name: ModelName) -> Response:
    return json_response(_model_metadata(_served(request, model_name, None)))


@router.get("/models/{model_name}/versions/{model_version}", response_model=ModelMetadata,
            responses=_MODEL_ERRORS, summary="Model metadata of one version")
async def model_version_metadata(
    request: Request, model_name: ModelName, model_version: ModelVersion
) -> Response:
    return json_response(_model_metadata(_served(request, model_name, model_version)))


@router.get("/models/{model_name}/ready", response_model=ModelReady, responses=_MODEL_ERRORS,
            summary="Model readiness: 200 when it serves, 503 when it failed to load")
async def model_ready(request: Request, model_name: ModelName) -> Response:
    return _model_ready(request, model_name, None)


@router.get("/models/{model_name}/versions/{model_version}/ready", response_model=ModelReady,
            responses=_MODEL_ERRORS, summary="Readiness of one model version")
async def model_version_ready(
    request: Request, model_name: ModelName, model_version: ModelVersion
) -> Response:
    return _model_ready(request, model_name, model_version)


_INFER_DOC = """Runs `pixels` (float32 [N, 1, 28, 28], raw MNIST-style pixels 0-255, white ink on black)
through the model and its dynamic batcher; returns `logits` and `probabilities` (FP32 [N, 10]), or only
the outputs named in `outputs`. Supports the binary tensor data extension (see the request body)."""


@router.post("/models/{model_name}/infer", response_model=InferenceResponse, responses=_INFER_RESPONSES,
             openapi_extra=_INFER_BODY, summary="Inference", description=_INFER_DOC)
async def infer(request: Request, model_name: ModelName) -> Response:
    return await _infer(request, model_name, None)


@router.post("/models/{model_name}/versions/{model_version}/infer", response_model=InferenceResponse,
             responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY, summary="Inference on one model version",
             description=_INFER_DOC)
async def infer_version(request: Request, model_name: ModelName, model_version: ModelVersion) -> Response:
    return await _infer(request, model_name, model_version)
