"""The KServe v2 binary tensor data extension, both ways: what the server and the remote client share.

A body (request or response) is a JSON header, optionally followed by raw little-endian tensor bytes.
The header's byte length travels in the HTTP header ``Inference-Header-Content-Length``; each tensor
sent as bytes carries ``parameters.binary_data_size`` instead of ``data``, in the header's order.
numpy and orjson only: no HTTP here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from core.contract import V2_HEADER_LENGTH

HEADER_LENGTH = V2_HEADER_LENGTH

# Datatype -> little-endian numpy dtype of its binary form.
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "FP32": "<f4", "FP16": "<f2", "FP64": "<f8",
        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    }.items()
}


class CodecError(ValueError):
    """A body that does not follow the binary tensor data extension; the message says what is off."""


def split_body(body: bytes, declared: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, binary tail) of a body whose header length is ``declared`` (None: all JSON)."""
    if declared is None:
        return body, memoryview(b"")
    try:
        n = int(declared)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise CodecError(f"header {HEADER_LENGTH}: {declared!r} must be the byte length of the JSON part, "
                         f"between 0 and the body's {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def tensor_from_binary(tail: memoryview, size: int, datatype: str, shape: tuple[int, ...], *,
                       name: str) -> np.ndarray:
    """The first ``size`` bytes of ``tail`` as a float32 tensor of ``shape`` (sent as ``datatype``)."""
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise CodecError(f"input {name!r}: binary_data_size is {size!r} but shape {list(shape)} of "
                         f"{datatype} needs {expected} bytes")
    if size > len(tail):
        raise CodecError(f"input {name!r}: binary_data_size is {size} but the body has only "
                         f"{len(tail)} bytes after the JSON part; check {HEADER_LENGTH}")
    # astype copies into aligned, native float32 memory (the tail may start at any byte offset).
    return np.frombuffer(tail, dtype=dtype, count=math.prod(shape)).astype(np.float32).reshape(shape)


def tensor_from_json(data: Any, shape: tuple[int, ...], *, name: str) -> np.ndarray:
    """A tensor's JSON ``data`` (numbers, flat or nested row-major) as float32 of ``shape``."""
    if not isinstance(data, list):
        raise CodecError(f'input {name!r}: "data" must be a list of numbers (flat or nested row-major), or send '
                         'the tensor as binary data ("parameters": {"binary_data_size": ...})')
    try:
        # No dtype: numpy infers it, so strings, booleans or nulls show up as a non-numeric dtype below
        # instead of being converted silently.
        array = np.asarray(data)
    except (ValueError, TypeError):
        raise CodecError(f'input {name!r}: "data" is ragged: nested lists must all have the same length') from None
    if array.dtype.kind not in "iuf":
        raise CodecError(f'input {name!r}: "data" must hold only numbers; found {_first_non_number(data)}')
    expected = math.prod(shape)
    if array.size != expected:
        raise CodecError(f'input {name!r}: "data" has {array.size} values but shape {list(shape)} needs {expected}')
    with np.errstate(over="ignore"):  # 1e300 becomes inf: the caller's range check refuses it
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


def encode(header: dict[str, Any], tensors: list[tuple[dict[str, Any], np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """A body: ``header`` with each (tensor entry, array, as binary) filled in, the tensors' bytes after it.

    Returns (body, header length); the length is None when nothing went as bytes (a plain JSON body)."""
    blobs: list[bytes] = []
    for entry, array, binary in tensors:
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            entry["data"] = array.ravel()
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def encode_request(name: str, array: np.ndarray, shape: tuple[int, ...], outputs: list[str]) -> tuple[bytes, int]:
    """An infer request carrying input ``name`` (``array`` seen as ``shape``) as bytes, UINT8 when it is
    uint8, else FP32, and asking for ``outputs`` as bytes. Returns (body, header length)."""
    datatype, data = ("UINT8", array) if array.dtype == np.uint8 else ("FP32", array.astype("<f4", copy=False))
    entry: dict[str, Any] = {"name": name, "shape": list(shape), "datatype": datatype}
    header = {"inputs": [entry], "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs]}
    body, length = encode(header, [(entry, data, True)])
    assert length is not None
    return body, length


def decode_output(content: bytes, declared: str | None, name: str) -> np.ndarray:
    """Output ``name`` of an infer response (JSON, or JSON header + bytes) as a float32 array."""
    head, tail = split_body(content, declared)
    header = orjson.loads(head)
    offset = 0
    for output in header["outputs"]:
        shape = tuple(output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if output["name"] == name:
            if size is None:
                return np.asarray(output["data"], np.float32).reshape(shape)
            dtype = DATATYPES[output.get("datatype", "FP32")]
            return np.frombuffer(tail, dtype, count=math.prod(shape), offset=offset).astype(np.float32).reshape(shape)
        offset += size or 0
    raise CodecError(f"the response has no output {name!r}")
