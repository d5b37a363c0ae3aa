"""The v2 request and response models: they validate the infer envelope (everything but the tensor's
numbers, which numpy converts) and generate the OpenAPI document.

A validator's message is the one the client sees (see service.errors.describe_validation), so each
says what was wrong and what to send instead.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, WithJsonSchema, field_validator, model_validator

from core.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAMES
from core.v2codec import DATATYPES

SHAPE_HINT = "[N, 1, 28, 28] (N images of 1x28x28)"

# The numbers themselves: numpy reads them (validating thousands of values one by one through pydantic
# costs a large share of throughput), so the model passes them through as they came.
TensorData = Annotated[Any, WithJsonSchema({
    "type": "array", "items": {},
    "description": "N*784 numbers 0-255 (raw MNIST-style pixels, white ink on black), flat or nested "
                   "row-major; absent when sent as binary data",
})]


class TensorParameters(BaseModel):
    binary_data_size: StrictInt | None = Field(
        None, ge=0, description="binary tensor data extension: the tensor's bytes follow the JSON header"
    )


class RequestInput(BaseModel):
    name: str = Field(description=f'must be "{INPUT_NAME}"')
    shape: list[int] = Field(description="[N, 1, 28, 28]")
    datatype: str = Field(description="FP32 (also FP16, FP64, INT8-64, UINT8-64: converted to float32)")
    parameters: TensorParameters | None = None
    data: TensorData = None

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, shape: Any) -> Any:
        if (not isinstance(shape, list) or len(shape) != 4
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
                or tuple(shape[1:]) != IMAGE_SHAPE):
            raise ValueError(f"input {INPUT_NAME!r} has shape {shape!r}; expected {SHAPE_HINT}")
        if shape[0] < 1:
            raise ValueError(f"input {INPUT_NAME!r} has shape {shape}: N must be at least 1")
        return shape

    @field_validator("datatype", mode="before")
    @classmethod
    def _datatype(cls, datatype: Any) -> Any:
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ValueError(f"input {INPUT_NAME!r} has datatype {datatype!r}; use FP32 (or one of "
                             f"{', '.join(DATATYPES)})")
        return datatype

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, parameters: Any) -> Any:
        if parameters is not None and not isinstance(parameters, dict):
            raise ValueError(f"input {INPUT_NAME!r} parameters must be a JSON object")
        return parameters

    @model_validator(mode="after")
    def _one_source(self) -> RequestInput:
        if self.binary_data_size is not None and self.data is not None:
            raise ValueError(f'input {INPUT_NAME!r} has both "data" and "binary_data_size"; send one')
        if self.binary_data_size is None and not isinstance(self.data, list):
            raise ValueError(f'input {INPUT_NAME!r}: "data" must be a list of numbers (flat or nested row-major), '
                             'or send the tensor as binary data ("parameters": {"binary_data_size": ...})')
        return self

    @property
    def binary_data_size(self) -> int | None:
        return self.parameters.binary_data_size if self.parameters else None


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data: bool | None = Field(None, description="return this output as binary data")

    @model_validator(mode="before")
    @classmethod
    def _no_classification(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("output parameters must be a JSON object")
        if "classification" in value:
            raise ValueError("the classification extension is not supported; ask for 'probabilities' "
                             "and take the argmax")
        return value


class RequestOutput(BaseModel):
    name: str = Field(description=" or ".join(f'"{n}"' for n in OUTPUT_NAMES))
    parameters: OutputParameters | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, name: Any) -> Any:
        if name not in OUTPUT_NAMES:
            raise ValueError(f"unknown output {name!r}; this model has {', '.join(map(repr, OUTPUT_NAMES))}")
        return name


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: bool | None = Field(None, description="return every output as binary data")


class InferenceRequest(BaseModel):
    id: str | None = Field(None, description="echoed in the response")
    parameters: RequestParameters | None = None
    outputs: list[RequestOutput] | None = Field(None, description="the outputs to return (default: all)")
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, doc: Any) -> Any:
        if not isinstance(doc, dict):
            raise ValueError('the body must be a JSON object like {"inputs": [{"name": "pixels", ...}]}')
        if "id" in doc and not isinstance(doc["id"], str):
            raise ValueError('"id" must be a string')
        if doc.get("parameters") is not None and not isinstance(doc["parameters"], dict):
            raise ValueError('"parameters" must be a JSON object')
        outputs = doc.get("outputs")
        if outputs is not None and (not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs)):
            raise ValueError('"outputs" must be a list of objects like {"name": "probabilities"}')
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
            raise ValueError(f'"inputs" must be a list holding one tensor object named {INPUT_NAME!r}')
        names = [i.get("name") for i in inputs]
        if names != [INPUT_NAME]:
            raise ValueError(f"inputs are {names}; this model takes exactly one input, {INPUT_NAME!r} "
                             "(FP32 [N, 1, 28, 28])")
        return doc

    def requested_outputs(self) -> list[tuple[str, bool]]:
        """(output name, as binary) for each output to return, in the requested order."""
        binary_default = bool(self.parameters and self.parameters.binary_data_output)
        if not self.outputs:  # as tritonclient means it: no outputs named, all of them
            return [(name, binary_default) for name in OUTPUT_NAMES]
        chosen = []
        for out in self.outputs:
            binary = out.parameters.binary_data if out.parameters else None
            chosen.append((out.name, binary_default if binary is None else binary))
        return chosen


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


class V2Error(BaseModel):
    error: str = Field(description="what was wrong and what to do")
    code: str = Field(description="machine-readable: unknown_model, queue_full, invalid_request, ... (see README)")
