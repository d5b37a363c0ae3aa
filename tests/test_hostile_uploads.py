"""Hostile and odd input: every answer is a defined 4xx that says what was wrong, or a valid prediction;
never a 5xx, never a hang, and a burst of decompression bombs leaves the server's memory bounded."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from testkit.live_server import LiveServer, rss_mib

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of stalling the suite

SEND_HINT = "send a PNG, JPEG, BMP, WebP or GIF"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
            + png_chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x44\x01\x00;"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(encode(Image.new("L", (8, 8)), "JPEG"))
    at = data.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height, width
    data[at:at + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def blank_bomb(mode: str, fmt: str, size: tuple[int, int] = (6000, 6000)) -> bytes:
    """A blank image of `size` that compresses to a few kB-100 kB: decoding it takes ~100x its size."""
    return encode(Image.new(mode, size), fmt, **({"optimize": True} if fmt == "PNG" else {}))


@pytest.fixture(scope="module")
def digit(mnist_test_sample) -> tuple[Image.Image, int]:
    """A real MNIST test digit, scaled up, as white ink on black (label 7)."""
    images, labels = mnist_test_sample
    return Image.fromarray(images[0]).resize((112, 112), Image.Resampling.BICUBIC), int(labels[0])


def predict_upload(client: TestClient, blob: bytes, how: str, content_type: str = "image/png"):
    if how == "raw":
        return client.post("/predict", content=blob, headers={"content-type": content_type})
    if how == "multipart":
        return client.post("/predict", files={"file": ("upload", blob, content_type)})
    return client.post("/predict", json={"images": [base64.b64encode(blob).decode()]})


def assert_refused(response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    # FastAPI's shape on /predict, the KServe v2 protocol's on v2 infer; either way one message and a code.
    text, code = (body["detail"], body["error"]) if "detail" in body else (body["error"], body["code"])
    assert message in text and re.fullmatch(r"[a-z_]+", code), body


# --- images ------------------------------------------------------------------------------------------------


def broken_images(digit_png: bytes, digit_jpeg: bytes) -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, expected status, a fragment of the message)."""
    return {
        "empty": (b"", 422, "the upload is empty"),
        "truncated PNG": (digit_png[: len(digit_png) // 2], 422, "corrupt or truncated"),
        "PNG signature only": (digit_png[:8], 422, "corrupt or truncated"),
        "truncated JPEG": (digit_jpeg[: len(digit_jpeg) // 2], 422, "corrupt or truncated"),
        "JPEG with a flipped byte run": (digit_jpeg[:200] + b"\xff" * 64 + digit_jpeg[264:], 422, SEND_HINT),
        "text": (b"hello, this is not an image\n" * 20, 422, "not an image in a supported format"),
        "random bytes": (np.random.default_rng(0).bytes(4096), 422, "not an image in a supported format"),
        "NUL bytes": (b"\0" * 4096, 422, "not an image"),
        "SVG with a script": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
                              b"<script>alert(document.cookie)</script><circle r='9'/></svg>", 422,
                              "SVG images are not supported"),
        "HTML": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", 422, "HTML"),
        "PDF": (b"%PDF-1.7\n" + b"0" * 200, 422, "PDF images are not supported"),
        "TIFF": (encode(Image.new("L", (28, 28)), "TIFF"), 422, "TIFF images are not supported"),
        "ICO": (encode(Image.new("RGBA", (32, 32)), "ICO"), 422, "ICO images are not supported"),
        "PNG of zero width": (png_claiming(0, 28), 422, SEND_HINT),
        "PNG claiming 60000x60000": (png_claiming(60000, 60000), 413, "above the limit"),
        "PNG claiming 2^31 x 2^31": (png_claiming(2**31 - 1, 2**31 - 1), 413, "above the limit"),
        "GIF claiming 65535x65535": (gif_claiming(65535, 65535), 413, "above the limit"),
        "JPEG claiming 65500x65500": (jpeg_claiming(65500, 65500), 413, "above the limit"),
        "blank": (encode(Image.new("L", (280, 280), 255), "PNG"), 422, "no ink"),
    }


@pytest.fixture(scope="module")
def broken(digit) -> dict[str, tuple[bytes, int, str]]:
    image, _ = digit
    return broken_images(encode(image, "PNG"), encode(image.convert("RGB"), "JPEG", quality=90))


BROKEN_NAMES = list(broken_images(b"\x89PNG\r\n\x1a\n" + b"0" * 64, b"\xff\xd8\xff" + b"0" * 300))


@pytest.mark.parametrize("how", ["raw", "multipart", "base64"])
@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_broken_and_foreign_files_get_a_defined_4xx_by_every_route(client, broken, name, how) -> None:
    blob, status, message = broken[name]
    assert_refused(predict_upload(client, blob, how), status, message)


def odd_modes(image: Image.Image) -> dict[str, bytes]:
    """The same digit (white ink on black) in the image modes people actually send."""
    ink = np.asarray(image)
    paper = Image.fromarray(255 - ink)  # dark ink on white paper
    rgba = np.zeros((*ink.shape, 4), np.uint8)
    rgba[..., 3] = ink  # black strokes on a transparent canvas
    palette = image.convert("P")
    frames = [palette, Image.new("P", image.size), Image.fromarray(255 - ink).convert("P")]
    return {
        "1-bit": encode(image.point(lambda v: 255 if v > 100 else 0).convert("1"), "PNG"),
        "16-bit grey": encode(Image.fromarray(ink.astype(np.uint16) * 257), "PNG"),
        "CMYK JPEG": encode(paper.convert("CMYK"), "JPEG", quality=95),
        "palette with transparency": encode(palette, "PNG", transparency=0),
        "LA": encode(Image.merge("LA", (paper, Image.new("L", image.size, 255))), "PNG"),
        "RGBA canvas": encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "animated GIF (first frame counts)": encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                                    duration=50, loop=0),
        "progressive JPEG": encode(paper.convert("RGB"), "JPEG", progressive=True, quality=90),
        "BMP": encode(paper, "BMP"),
        "WebP lossless": encode(paper, "WEBP", lossless=True),
        "tiny 7x7": encode(image.resize((7, 7)), "PNG"),
        "very wide 3000x112": encode(Image.fromarray(np.pad(ink, ((0, 0), (1444, 1444)))), "PNG"),
    }


@pytest.mark.parametrize("name", list(odd_modes(Image.new("L", (8, 8)))))
def test_odd_image_modes_are_read_as_the_digit_they_show(client, digit, name) -> None:
    image, label = digit
    blob = odd_modes(image)[name]
    response = predict_upload(client, blob, "multipart")
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["digit"] == label


def test_a_blank_bomb_under_the_pixel_limit_is_decoded_within_bounds_and_refused_as_blank(client) -> None:
    bomb = blank_bomb("1", "PNG", (8000, 5000))  # 40 M pixels in a few kB
    assert len(bomb) < 20_000
    assert_refused(predict_upload(client, bomb, "raw"), 422, "no ink")


def test_a_lower_pixel_limit_refuses_bombs_before_decoding(models_dir: Path) -> None:
    with TestClient(create_app(Settings(models_dir=models_dir, max_image_pixels=1_000_000))) as strict:
        assert_refused(predict_upload(strict, blank_bomb("L", "PNG", (1001, 1000)), "raw"), 413, "1,001,000 pixels")
        assert predict_upload(strict, blank_bomb("L", "PNG", (1000, 1000)), "raw").status_code == 422


# --- JSON --------------------------------------------------------------------------------------------------


def deep(levels: int, inner: str = "0") -> str:
    return "[" * levels + inner + "]" * levels


def v2_doc(data: str = json.dumps([0] * 784), *, shape: str = "[1, 1, 28, 28]", datatype: str = '"FP32"',
           extra: str = "", data_key: str = '"data"') -> str:
    """A v2 infer body with its parts given as JSON text (so they can be what no encoder would write)."""
    tensor = f'{{"name": "pixels", "shape": {shape}, "datatype": {datatype}, {data_key}: {data}}}'
    return f'{{"inputs": [{tensor}]{extra}}}'


def member(key: str, value: str) -> str:
    return f'{{"{key}": {value}}}'


def image_ending_in(value: str) -> str:
    """A 28x28 pixels body whose last row starts with ``value`` (written as is)."""
    rows = json.dumps([[0] * 28] * 27)[:-1]
    return member("pixels", f"{rows}, [{value}{', 0' * 27}]]")

PREDICT_JSON = {
    "100,000 nested lists": (deep(100_000), 422, "not valid JSON"),
    "100,000 nested objects": ('{"a":' * 100_000 + "1" + "}" * 100_000, 422, "not valid JSON"),
    "pixels nested 2,000 deep": (member("pixels", deep(2000)), 422, "not valid JSON"),
    "pixels nested 1,000 deep": (member("pixels", deep(1000)), 422, "28x28"),
    "pixels nested 30 deep": (member("pixels", deep(30)), 422, "28x28"),
    "pixels nested 500 deep": (member("pixels", deep(500)), 422, ""),
    "images nested 2,000 deep": (member("images", deep(2000, '"x"')), 422, "not valid JSON"),
    "images nested 1,000 deep": (member("images", deep(1000, '"x"')), 422, "list of base64"),
    "NaN literal": (image_ending_in("NaN"), 422, "not valid JSON"),
    "Infinity literal": (image_ending_in("Infinity"), 422, "not valid JSON"),
    "1e400": (image_ending_in("1e400"), 422, "not valid JSON"),
    "a 400-digit integer": (image_ending_in("1" + "0" * 400), 422, "not valid JSON"),
    "2^65": (image_ending_in(str(2**65)), 422, "between 0 and 255"),
    "1e300": (image_ending_in("1e300"), 422, "between 0 and 255"),
    "-1e-300": (image_ending_in("-1e-300"), 422, "no ink"),  # -0.0 in float32: an all-zero image, blank
    "null pixel": (image_ending_in("null"), 422, "null"),
    "pixels a string": ('{"pixels": "0"}', 422, "28x28"),
    "pixels true": ('{"pixels": true}', 422, "28x28"),
    "pixels an object": ('{"pixels": {"0": 0}}', 422, "numbers"),
    "pixels of numeric strings": (member("pixels", json.dumps([["1"] * 28] * 28)), 200, ""),
    "pixels of other strings": (member("pixels", json.dumps([["one"] * 28] * 28)), 422, "numbers"),
    "pixels of booleans": (member("pixels", json.dumps([[True] * 28] * 28)), 200, ""),
    "images a number": ('{"images": 7}', 422, "list of base64"),
    "images of numbers": ('{"images": [7]}', 422, "list of base64"),
    "images empty": ('{"images": []}', 422, "no images"),
    "both keys": ('{"pixels": [], "images": []}', 422, "either"),
    "a bare number": ("7", 422, '"pixels"'),
    "a bare string": ('"pixels"', 422, '"pixels"'),
    "null": ("null", 422, '"pixels"'),
    "empty body": ("", 422, "not valid JSON"),
    "truncated": ('{"pixels": [[0, 0', 422, "not valid JSON"),
    "invalid UTF-8": (b'{"pixels": "\xff\xfe"}', 422, "not valid JSON"),
    "UTF-16": ('{"pixels": 1}'.encode("utf-16"), 422, "not valid JSON"),
    "a lone surrogate": ('{"pixels": "\\ud800"}', 422, "not valid JSON"),
    "257 images": (member("pixels", json.dumps([[[0] * 28] * 28] * 257)), 413, "limit is 256"),
}


@pytest.mark.parametrize("name", list(PREDICT_JSON))
def test_hostile_json_to_predict_gets_a_defined_answer(client, name) -> None:
    body, status, message = PREDICT_JSON[name]
    response = client.post("/predict", content=body if isinstance(body, bytes) else body.encode(),
                           headers={"content-type": "application/json"})
    if status == 200:  # what NumPy reads as a number is one ("1", true): a valid image
        assert response.status_code == 200 and len(response.json()["predictions"]) == 1
    else:
        assert_refused(response, status, message)


V2_JSON = {
    "100,000 nested lists": (deep(100_000), 422, "not valid JSON"),
    "data nested 2,000 deep": (v2_doc(deep(2000)), 422, "not valid JSON"),
    "data nested 1,000 deep": (v2_doc(deep(1000)), 422, '"data"'),
    "data nested 500 deep": (v2_doc(deep(500)), 422, '"data"'),
    "data nested 30 deep": (v2_doc(deep(30)), 422, "needs 784"),
    "NaN literal": (v2_doc("[NaN]"), 422, "not valid JSON"),
    "1e400": (v2_doc("[1e400]"), 422, "not valid JSON"),
    "1e300": (v2_doc(json.dumps([1e300] * 784)), 422, "NaN or infinite"),
    "2^65": (v2_doc(json.dumps([2**65] * 784)), 422, "0-255"),
    "strings": (v2_doc(json.dumps(["0"] * 784)), 422, "only numbers"),
    "nulls": (v2_doc(json.dumps([None] * 784)), 422, "only numbers"),
    "objects": (v2_doc(json.dumps([{}] * 784)), 422, "only numbers"),
    "ragged": (v2_doc(json.dumps([[0] * 28] * 27 + [[0] * 27])), 422, "ragged"),
    "shape of strings": (v2_doc(shape='["1", 1, 28, 28]'), 422, "expected [N, 1, 28, 28]"),
    "shape 10^12 images": (v2_doc(shape="[1000000000000, 1, 28, 28]"), 413, "limit is 256"),
    "shape 2^70 images": (v2_doc(shape="[1180591620717411303424, 1, 28, 28]"), 422, "expected [N, 1, 28, 28]"),
    "negative shape": (v2_doc(shape="[-1, 1, 28, 28]"), 422, "at least 1"),
    "datatype a number": (v2_doc(datatype="5"), 422, "datatype"),
    "datatype BYTES": (v2_doc(datatype='"BYTES"'), 422, "datatype"),
    "inputs an object": ('{"inputs": {"name": "pixels"}}', 422, '"inputs" must be a list'),
    "no inputs": ("{}", 422, '"inputs" must be a list'),
    "parameters a list": (v2_doc(extra=', "parameters": [1]'), 422, "must be a JSON object"),
    "outputs a string": (v2_doc(extra=', "outputs": "x"'), 422, '"outputs" must be a list'),
    "unknown output": (v2_doc(extra=', "outputs": [{"name": 5}]'), 422, "unknown output"),
    "id a number": (v2_doc(extra=', "id": 5'), 422, '"id" must be a string'),
    "binary size negative": (v2_doc('{"binary_data_size": -1}', datatype='"UINT8"', data_key='"parameters"'),
                             422, "binary_data_size"),
    "binary size 10^20": (v2_doc('{"binary_data_size": 100000000000000000000}', datatype='"UINT8"',
                                 data_key='"parameters"'), 422, "binary_data_size"),
    "invalid UTF-8": (b'{"inputs": "\xff"}', 422, "not valid JSON"),
    "empty body": ("", 422, "not valid JSON"),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # 1e300 -> float32 inf
@pytest.mark.parametrize("name", list(V2_JSON))
def test_hostile_json_to_v2_infer_gets_a_defined_4xx(client, name) -> None:
    body, status, message = V2_JSON[name]
    response = client.post("/v2/models/lenet5/infer", content=body if isinstance(body, bytes) else body.encode(),
                           headers={"content-type": "application/json"})
    assert_refused(response, status, message)


@pytest.mark.parametrize("value", ["-1", "abc", "99999999999999999999", "1e3"])
def test_a_lying_binary_header_length_is_422(client, value) -> None:
    headers = {"content-type": "application/octet-stream", "Inference-Header-Content-Length": value}
    response = client.post("/v2/models/lenet5/infer", content=b'{"inputs": []}', headers=headers)
    assert_refused(response, 422, "Inference-Header-Content-Length")


@pytest.mark.parametrize("content_type,body,status,message", [
    ("multipart/form-data", b"no boundary", 422, "malformed multipart"),
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", 422, ""),
    ("multipart/form-data; boundary=x", b"--x--\r\n", 422, '"file"'),
    ("application/x-www-form-urlencoded", b"file=abc", 415, "unsupported content type"),
    ("text/json", b"{}", 415, "unsupported content type"),
    ("", b"{}", 415, "unsupported content type"),
])
def test_odd_content_types_and_broken_multipart_get_a_defined_4xx(client, content_type, body, status, message) -> None:
    response = client.post("/predict", content=body, headers={"content-type": content_type} if content_type else {})
    assert_refused(response, status, message)


def test_too_many_files_or_fields_in_a_multipart_body_are_refused(client) -> None:
    files = [("file", (f"{i}.png", b"x", "image/png")) for i in range(300)]
    assert_refused(client.post("/predict", files=files), 413, "limit is 256")
    fields = {f"field{i}": "x" for i in range(100)}
    assert_refused(client.post("/predict", data=fields, files={"file": ("a.png", b"x", "image/png")}), 422,
                   "Too many fields")


# --- a live server: bodies over the limit, and memory under a burst of bombs -------------------------------


def raw_exchange(port: int, head: bytes, body_chunks: list[bytes], timeout_s: float = 20) -> bytes:
    """Send a hand-made request on a fresh connection and return the server's answer, read until it
    closes the connection. Sending stops early when the server has answered and closed already."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
        return answer


@pytest.fixture(scope="module")
def small_server(models_dir: Path):
    """A live server with a 1 MB body limit and two decoding threads."""
    with LiveServer(models_dir, env={"DIGITS_MAX_BODY_BYTES": str(1 << 20), "DIGITS_DECODE_THREADS": "2"}) as server:
        yield server


def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(small_server) -> None:
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    started = time.monotonic()
    answer = raw_exchange(small_server.port, head, [])  # the gigabyte is never sent
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"1,048,576-byte limit" in answer and time.monotonic() - started < 15


def test_a_chunked_body_over_the_limit_is_413_while_it_streams(small_server) -> None:
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    answer = raw_exchange(small_server.port, head, [chunk] * 64 + [b"0\r\n\r\n"])  # 4 MB offered
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    with httpx.Client(base_url=small_server.url, timeout=10) as http:
        assert http.get("/healthz").status_code == 200


def test_bursts_of_decompression_bombs_leave_memory_bounded(small_server, digit) -> None:
    """Two bursts of 6 concurrent blank 36-megapixel images (~100 kB each, ~300 MB each to decode):
    every one refused as blank, the peak bounded by the decoding threads, and the second burst
    adds nothing the first did not take."""
    bombs = [blank_bomb("RGBA", "PNG"), blank_bomb("1", "PNG"), blank_bomb("P", "GIF")] * 2
    assert max(len(b) for b in bombs) < 1 << 20

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=60) as http:
            answers = await asyncio.gather(*(http.post("/predict", content=b, headers={"content-type": "image/png"})
                                              for b in bombs))
        return [r.status_code for r in answers]

    image, label = digit
    with httpx.Client(base_url=small_server.url, timeout=30) as http:
        http.post("/predict", files={"file": ("d.png", encode(image, "PNG"), "image/png")})  # warm
        before = rss_mib(small_server.pid)
        assert asyncio.run(burst()) == [422] * len(bombs)
        after_one = rss_mib(small_server.pid)
        assert asyncio.run(burst()) == [422] * len(bombs)
        after_two = rss_mib(small_server.pid)
        peak = rss_mib(small_server.pid, "VmHWM")
        answer = http.post("/predict", files={"file": ("d.png", encode(image, "PNG"), "image/png")})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["digit"] == label
    # Six bombs decoded at once would take ~1.8 GB; two at a time take ~0.6 GB.
    print(f"RSS MiB: before {before:.0f}, after one burst {after_one:.0f}, after two {after_two:.0f}, peak {peak:.0f}")
    assert peak - before < 1200, (before, after_one, after_two, peak)
    assert after_two - after_one < 200, (before, after_one, after_two, peak)

