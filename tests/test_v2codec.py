"""The binary tensor codec both the server and the remote client use: each side reads what the other writes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from core import v2codec


def test_a_request_written_by_the_client_is_read_back_by_the_server_unchanged(mnist_test_sample) -> None:
    images = mnist_test_sample[0][:5]  # uint8 [5, 28, 28]
    body, length = v2codec.encode_request("pixels", images, (5, 1, 28, 28), ["probabilities"])
    head, tail = v2codec.split_body(body, str(length))
    entry = orjson.loads(head)["inputs"][0]
    assert entry["datatype"] == "UINT8" and entry["shape"] == [5, 1, 28, 28]
    x = v2codec.tensor_from_binary(tail, entry["parameters"]["binary_data_size"], entry["datatype"],
                                   tuple(entry["shape"]), name="pixels")
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32))


def test_an_answer_written_by_the_server_is_read_by_the_client_as_bytes_or_json() -> None:
    probabilities = np.random.default_rng(0).random((3, 10), dtype=np.float32)
    logits = -probabilities
    for binary in (True, False):
        entries = [{"name": "logits", "datatype": "FP32", "shape": [3, 10]},
                   {"name": "probabilities", "datatype": "FP32", "shape": [3, 10]}]
        header = {"model_name": "m", "outputs": entries}
        body, length = v2codec.encode(header, [(entries[0], logits, binary), (entries[1], probabilities, binary)])
        assert (length is None) == (not binary)
        declared = None if length is None else str(length)
        np.testing.assert_array_equal(v2codec.decode_output(body, declared, "probabilities"), probabilities)
        np.testing.assert_array_equal(v2codec.decode_output(body, declared, "logits"), logits)


@pytest.mark.parametrize("declared", ["-1", "x", "99999"])
def test_a_header_length_outside_the_body_is_refused_with_the_reason(declared: str) -> None:
    with pytest.raises(v2codec.CodecError, match="must be the byte length of the JSON part"):
        v2codec.split_body(b"{}", declared)


def test_json_data_that_is_not_numbers_names_the_first_offender() -> None:
    with pytest.raises(v2codec.CodecError, match='only numbers; found "7"'):
        v2codec.tensor_from_json([[0, "7"]], (1, 2), name="pixels")
    with pytest.raises(v2codec.CodecError, match="has 3 values but shape \\[1, 2\\] needs 2"):
        v2codec.tensor_from_json([0, 1, 2], (1, 2), name="pixels")
