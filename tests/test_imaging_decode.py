"""service/imaging/decode.py, end to end: real MNIST digits redrawn the ways users send them
(every format and mode), and bad uploads.

Each redrawn digit must come back as the original digit does: `to_mnist` of the 28x28
MNIST image is the reference (it reproduces MNIST itself, see test_to_mnist_reproduces_mnist).
"""

from __future__ import annotations

import gzip
import io
import struct
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from service.imaging import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    ImageDecodeError,
    ImageTooLargeError,
    ImagingError,
    NoInkError,
    PixelArrayError,
    decode_image,
    preprocess_image_bytes,
    to_mnist,
)
from service.imaging.decode import luma_of
from service.imaging.ink import find_ink

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"
MODEL = Path(__file__).parent.parent / "models" / "lenet5.onnx"
N_DIGITS = 50


def _read_idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(SAMPLE / name) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first N_DIGITS MNIST test images, uint8 [N,28,28], white ink on black."""
    return _read_idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:N_DIGITS]


@pytest.fixture(scope="module")
def references(digits: np.ndarray) -> np.ndarray:
    return np.stack([to_mnist(d.astype(np.float32)) for d in digits])


# --- helpers ---------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    if fmt == "PNG":
        params.setdefault("compress_level", 1)  # fast; the pixels are the same
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _upscale(digit: np.ndarray, factor: int) -> np.ndarray:
    """uint8 [28f,28f]: the digit redrawn larger, smoothly (as if drawn at that size)."""
    size = 28 * factor
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))


def _on_canvas(ink: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    canvas = np.zeros(shape, dtype=np.uint8)
    canvas[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return canvas


def _blur(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur, [28,28] -> [28,28]."""
    padded = np.pad(image, 1)
    rows: np.ndarray = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    blurred: np.ndarray = (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4
    return blurred


def _similarity(output: np.ndarray, reference: np.ndarray, *, blur: bool) -> float:
    """Best correlation over whole-pixel shifts of at most 1, optionally after a light blur.

    Centring moves a digit by whole pixels, as MNIST did, so a centre of mass sitting near
    x.5 may round either way after re-encoding: a 1-px shift is the same digit. A redrawn
    digit is also resampled twice (drawn larger, then fitted to 20x20) with another
    sub-pixel phase than the original: for a 2-px stroke that alone costs correlation, which
    the blur forgives while keeping the digit's shape decisive.
    """
    if blur:
        output, reference = _blur(output), _blur(reference)
    shifts = np.stack(
        [np.roll(output, (dy, dx), axis=(0, 1)).ravel() for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )  # [9,784]
    shifts -= shifts.mean(axis=1, keepdims=True)
    target = reference.ravel() - reference.mean()
    correlations = shifts @ target / (np.linalg.norm(shifts, axis=1) * np.linalg.norm(target))
    return float(correlations.max())


def _centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    total = image.sum()
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def _assert_mnist_like(output: np.ndarray) -> None:
    assert output.shape == (28, 28)
    assert output.dtype == np.float32
    assert output.min() >= 0.0
    assert output.max() == pytest.approx(255.0)
    com_row, com_col = _centre_of_mass(output)
    assert abs(com_row - 14.0) <= 1.0
    assert abs(com_col - 14.0) <= 1.0
    rows = np.flatnonzero(output.any(axis=1))
    cols = np.flatnonzero(output.any(axis=0))
    assert rows[-1] - rows[0] + 1 <= 20
    assert cols[-1] - cols[0] + 1 <= 20


# --- redrawn digits --------------------------------------------------------------------


def _png_large_centred(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_on_canvas(_upscale(d, 10), (300, 300), 10, 10)), "PNG")


def _png_top_left_corner(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_on_canvas(_upscale(d, 5), (480, 640), 0, 0)), "PNG")


def _png_bottom_right_corner(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_on_canvas(_upscale(d, 3), (300, 300), 300 - 84, 300 - 84)), "PNG")


def _png_small_in_large_canvas(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_on_canvas(_upscale(d, 2), (600, 800), 520, 20)), "PNG")


def _png_inverted(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(255 - _on_canvas(_upscale(d, 4), (200, 240), 50, 70)), "PNG")


def _canvas_rgba(d: np.ndarray, colour: tuple[int, int, int]) -> bytes:
    """A browser canvas export: transparent (0,0,0,0) except the strokes, any colour."""
    alpha = _on_canvas(_upscale(d, 10), (280, 280), 0, 0)
    rgba = np.zeros((280, 280, 4), dtype=np.uint8)
    rgba[alpha > 0, :3] = colour
    rgba[..., 3] = alpha
    return _encode(Image.fromarray(rgba), "PNG")


def _canvas_black_strokes(d: np.ndarray) -> bytes:
    return _canvas_rgba(d, (0, 0, 0))


def _canvas_white_strokes(d: np.ndarray) -> bytes:
    return _canvas_rgba(d, (255, 255, 255))


def _canvas_blue_strokes(d: np.ndarray) -> bytes:
    return _canvas_rgba(d, (20, 40, 220))


def _canvas_filled_white(d: np.ndarray) -> bytes:
    """A canvas the page filled white first: RGBA, every pixel opaque, black strokes."""
    ink = _on_canvas(_upscale(d, 8), (280, 280), 28, 28)
    rgba = np.full((280, 280, 4), 255, dtype=np.uint8)
    rgba[..., :3] = (255 - ink)[..., None]
    return _encode(Image.fromarray(rgba), "PNG")


def _screenshot_transparent_margin(d: np.ndarray) -> bytes:
    """Dark digit on an opaque white window whose margin is transparent (a screenshot)."""
    ink = _on_canvas(_upscale(d, 8), (300, 300), 38, 38)
    rgba = np.zeros((300, 300, 4), dtype=np.uint8)
    rgba[..., :3] = (255 - ink)[..., None]
    rgba[10:-10, 10:-10, 3] = 255
    return _encode(Image.fromarray(rgba), "PNG")


def _gif_palette(d: np.ndarray) -> bytes:
    image = Image.fromarray(255 - _upscale(d, 6)).convert("RGB").quantize(colors=16)
    return _encode(image, "GIF")


def _gif_animated(d: np.ndarray) -> bytes:
    first = Image.fromarray(_upscale(d, 6)).convert("P")
    second = Image.new("P", first.size, 128)
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100)


def _gif_transparent_canvas(d: np.ndarray) -> bytes:
    """A canvas saved as GIF: binary transparency, and the transparent palette entry has the
    strokes' own colour (black), so only the transparency tells strokes from background."""
    strokes = _upscale(d, 10) > 127
    image = Image.fromarray(strokes.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 0, 0, 0])  # index 0 (transparent) and 1 (strokes): both black
    return _encode(image, "GIF", transparency=0)


def _png_palette_transparent(d: np.ndarray) -> bytes:
    ink = _upscale(d, 6)
    image = Image.fromarray(255 - ink).convert("P")
    return _encode(image, "PNG", transparency=255)  # palette index 255 = white = transparent


def _png_16bit(d: np.ndarray) -> bytes:
    ink = _upscale(d, 5).astype(np.uint16) * 257
    return _encode(Image.fromarray(ink), "PNG")  # Pillow writes I;16 as a 16-bit PNG


def _png_1bit(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_upscale(d, 10) > 100), "PNG")


def _jpeg_cmyk(d: np.ndarray) -> bytes:
    image = Image.fromarray(255 - _upscale(d, 6)).convert("CMYK")
    return _encode(image, "JPEG", quality=90)


def _bmp_rgb(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(255 - _upscale(d, 6)).convert("RGB"), "BMP")


def _webp_lossy(d: np.ndarray) -> bytes:
    ink = _on_canvas(_upscale(d, 6), (240, 320), 40, 100)
    return _encode(Image.fromarray(255 - ink).convert("RGB"), "WEBP", quality=80)


def _jpeg_q75(d: np.ndarray) -> bytes:
    return _encode(Image.fromarray(_on_canvas(_upscale(d, 8), (480, 640), 200, 400)), "JPEG", quality=75)


def _jpeg_grey_paper(d: np.ndarray) -> bytes:
    """Dark grey ink on noisy light-grey paper, like a photo of a page."""
    ink = _on_canvas(_upscale(d, 6), (240, 240), 30, 30).astype(np.float32) / 255
    noise = np.random.default_rng(0).normal(0.0, 4.0, ink.shape)
    photo = 200 - 150 * ink + noise
    return _encode(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), "JPEG", quality=85)


def _jpeg_exif_rotated(d: np.ndarray) -> bytes:
    """A phone photo: pixels stored rotated, EXIF orientation 6 says turn them upright."""
    stored = Image.fromarray(255 - _upscale(d, 6)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _encode(stored, "JPEG", quality=90, exif=exif.tobytes())


VARIANTS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png 10x centred on 300x300": _png_large_centred,
    "png 5x in the top-left corner of 640x480": _png_top_left_corner,
    "png 3x in the bottom-right corner": _png_bottom_right_corner,
    "png 2x small in a corner of 800x600": _png_small_in_large_canvas,
    "png inverted (black ink on white)": _png_inverted,
    "rgba canvas, black strokes on transparent": _canvas_black_strokes,
    "rgba canvas, white strokes on transparent": _canvas_white_strokes,
    "rgba canvas, blue strokes on transparent": _canvas_blue_strokes,
    "rgba canvas filled white, black strokes": _canvas_filled_white,
    "rgba screenshot with transparent margin": _screenshot_transparent_margin,
    "gif palette, black on white": _gif_palette,
    "gif animated (first frame)": _gif_animated,
    "gif transparent canvas, black strokes": _gif_transparent_canvas,
    "png palette with transparency": _png_palette_transparent,
    "png 16-bit": _png_16bit,
    "png 1-bit": _png_1bit,
    "jpeg cmyk": _jpeg_cmyk,
    "bmp rgb": _bmp_rgb,
    "webp lossy": _webp_lossy,
    "jpeg q75 off-centre": _jpeg_q75,
    "jpeg grey paper with noise": _jpeg_grey_paper,
    "jpeg with exif rotation": _jpeg_exif_rotated,
}


@pytest.fixture(scope="module")
def encoded(digits: np.ndarray) -> dict[str, list[bytes]]:
    """Variant name -> the N digits redrawn that way, as image files."""
    return {name: [make(d) for d in digits] for name, make in VARIANTS.items()}


@pytest.fixture(scope="module")
def redrawn(encoded: dict[str, list[bytes]]) -> dict[str, np.ndarray]:
    """Variant name -> [N,28,28] preprocess_image_bytes outputs (shared with the model test)."""
    return {name: np.stack([preprocess_image_bytes(data) for data in files]) for name, files in encoded.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_redrawn_digit_matches_original(
    variant: str, redrawn: dict[str, np.ndarray], references: np.ndarray
) -> None:
    outputs = redrawn[variant]
    shape = [_similarity(o, r, blur=True) for o, r in zip(outputs, references, strict=True)]
    worst = int(np.argmin(shape))
    assert shape[worst] > 0.9, f"digit {worst}: correlation {shape[worst]:.3f} after blurring"
    pixels = [_similarity(o, r, blur=False) for o, r in zip(outputs, references, strict=True)]
    assert np.mean(pixels) > 0.94, f"mean correlation {np.mean(pixels):.3f}"
    for output in outputs:
        _assert_mnist_like(output)


def test_to_mnist_reproduces_mnist(digits: np.ndarray, references: np.ndarray) -> None:
    """MNIST digits are already MNIST-style: the recipe leaves them (nearly) unchanged."""
    for digit, reference in zip(digits, references, strict=True):
        assert np.corrcoef(digit.ravel(), reference.ravel())[0, 1] > 0.99
        _assert_mnist_like(reference)


def test_same_digit_any_polarity_or_alpha_gives_same_input(digits: np.ndarray) -> None:
    """White on black, black on white, and canvas strokes of either colour are one digit."""
    digit = digits[0]
    white_on_black = preprocess_image_bytes(_encode(Image.fromarray(_upscale(digit, 10)), "PNG"))
    black_on_white = preprocess_image_bytes(_encode(Image.fromarray(255 - _upscale(digit, 10)), "PNG"))
    black_strokes = preprocess_image_bytes(_canvas_black_strokes(digit))
    white_strokes = preprocess_image_bytes(_canvas_white_strokes(digit))
    np.testing.assert_allclose(black_on_white, white_on_black, atol=1.0)
    np.testing.assert_allclose(black_strokes, white_strokes, atol=1.0)
    np.testing.assert_allclose(black_strokes, white_on_black, atol=1.0)


@pytest.mark.parametrize(
    "line",
    [(slice(100, 900), slice(500, 501)), (slice(500, 501), slice(100, 900))],
    ids=["vertical", "horizontal"],
)
def test_thin_line_on_large_canvas_survives(line: tuple[slice, slice]) -> None:
    canvas = np.zeros((1000, 1000), dtype=np.uint8)
    canvas[line] = 255
    output = preprocess_image_bytes(_encode(Image.fromarray(canvas), "PNG"))
    _assert_mnist_like(output)
    assert (output > 127).sum() >= 20  # a full-length line of 20 px, not a faded smear


def test_thin_diagonal_stroke_on_large_canvas_survives() -> None:
    canvas = Image.new("L", (1000, 1000), 255)
    ImageDraw.Draw(canvas).line([(150, 850), (850, 150)], fill=0, width=1)
    output = preprocess_image_bytes(_encode(canvas, "PNG"))
    _assert_mnist_like(output)
    assert (output > 127).sum() >= 20  # a 1-px diagonal of 1000 px still reaches 255 along its length


_XMP_ROTATE_90 = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


@pytest.mark.parametrize("where", ["png exif chunk", "png xmp", "webp exif"])
def test_orientation_outside_jpeg_is_applied(digits: np.ndarray, where: str) -> None:
    """EXIF is parsed only when a file carries metadata: wherever it does, it is honoured."""
    upright = Image.fromarray(255 - _upscale(digits[7], 6))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    if where == "png exif chunk":
        data = _encode(stored, "PNG", exif=exif.tobytes())
    elif where == "png xmp":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", _XMP_ROTATE_90)
        data = _encode(stored, "PNG", pnginfo=info)
    else:
        data = _encode(stored, "WEBP", exif=exif.tobytes(), lossless=True)
    expected = preprocess_image_bytes(_encode(upright, "PNG"))
    np.testing.assert_array_equal(preprocess_image_bytes(data), expected)


def test_digit_small_in_corner_equals_centred(digits: np.ndarray) -> None:
    digit = _upscale(digits[3], 3)
    centred = _on_canvas(digit, (600, 600), 258, 258)
    cornered = _on_canvas(digit, (600, 600), 600 - 84, 0)
    np.testing.assert_array_equal(
        preprocess_image_bytes(_encode(Image.fromarray(cornered), "PNG")),
        preprocess_image_bytes(_encode(Image.fromarray(centred), "PNG")),
    )


def _wide_image(digit: np.ndarray, mode: str) -> bytes:
    """A 2400x400 image (longer than the working side) with the digit drawn 12x."""
    ink = _on_canvas(_upscale(digit, 12), (400, 2400), 30, 1800)
    if mode == "JPEG RGB":
        return _encode(Image.fromarray(255 - ink).convert("RGB"), "JPEG", quality=90)
    if mode == "P transparent":
        return _encode(Image.fromarray(255 - ink).convert("P"), "PNG", transparency=255)
    if mode == "1":
        return _encode(Image.fromarray(ink > 127), "PNG")
    return _encode(Image.fromarray(ink.astype(np.uint16) * 257), "PNG")  # I;16


@pytest.mark.parametrize("mode", ["JPEG RGB", "P transparent", "1", "I;16"])
def test_large_image_is_shrunk_first_with_the_same_result(digits: np.ndarray, mode: str) -> None:
    """preprocess_image_bytes shrinks images longer than WORKING_SIDE before finding the ink: the
    digit comes out as from the whole image, but for the resampling of its edges."""
    for digit in digits[[7, 11]]:
        data = _wide_image(digit, mode)
        full_size = to_mnist(_gray(decode_image(data)))
        assert _similarity(preprocess_image_bytes(data), full_size, blur=True) > 0.95


# --- every mode: luminance, then ink -------------------------------------------------------


def _gray(image: Image.Image) -> np.ndarray:
    """float32 [H,W]: the ink of a decoded image, 0 where there is none."""
    return find_ink(luma_of(image)).strength


def _bar_image() -> np.ndarray:
    """uint8 [40,40]: dark ink (a bar) on white paper."""
    paper = np.full((40, 40), 255, dtype=np.uint8)
    paper[10:30, 18:22] = 0
    return paper


def _mode_image(mode: str) -> Image.Image:
    paper = _bar_image()
    gray = Image.fromarray(paper)
    if mode == "I;16":
        return Image.fromarray(paper.astype(np.uint16) * 257)
    if mode == "I;16B":  # big-endian 16-bit (Pillow's I;16 -> I;16B convert clips at 255)
        return Image.frombytes(mode, gray.size, (paper.astype(">u2") * 257).tobytes())
    if mode == "I":
        return Image.fromarray(paper.astype(np.int32) * 257)  # a 16-bit range held in "I"
    if mode == "F":
        return Image.fromarray(paper.astype(np.float32) / 255)  # 0..1 floats
    if mode == "LA":
        return Image.merge("LA", [gray, Image.new("L", gray.size, 255)])
    if mode == "P":
        return gray.convert("P")
    return gray.convert(mode)


@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV", "LAB", "I;16", "I;16B", "I", "F"],
)
def test_every_mode_gives_white_ink_on_black(mode: str) -> None:
    image = _mode_image(mode)
    assert image.mode == mode
    luma = luma_of(image)
    assert luma.shape == (40, 40)
    assert luma.dtype == np.float32
    np.testing.assert_allclose(luma, _bar_image(), atol=1.5)  # 0..255 whatever the mode's range
    gray = _gray(image)
    bar = _bar_image() == 0
    assert gray[bar].min() > 200  # ink high
    assert gray[~bar].max() == 0.0  # background exactly 0


def test_light_ink_on_dark_paper_gives_the_same_ink() -> None:
    gray = _gray(Image.fromarray(255 - _bar_image()))
    np.testing.assert_array_equal(gray, _gray(Image.fromarray(_bar_image())))


def test_fully_transparent_is_blank() -> None:
    assert not luma_of(Image.new("RGBA", (50, 50), (0, 0, 0, 0))).any()
    with pytest.raises(NoInkError):
        _gray(Image.new("RGBA", (50, 50), (0, 0, 0, 0)))


# --- decode errors -------------------------------------------------------------------------


def _hand_built_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with a token IDAT: the header is all that
    a size check may read, so no pixel data is needed to show it is refused."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _valid_png() -> bytes:
    return _encode(Image.fromarray(255 - _bar_image()), "PNG")


def _decode_error(data: bytes, **kwargs: int) -> ImagingError:
    with pytest.raises(ImagingError) as caught:
        preprocess_image_bytes(data, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "the upload is empty"),
        (np.random.default_rng(1).bytes(4096), "not an image in a supported format"),
        (_valid_png()[:-40], "PNG data is corrupt or truncated"),
        (_valid_png()[:20], "looks like a PNG file but is corrupt or truncated"),
        (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
            b'<path d="M14 4 L14 24" stroke="black"/></svg>',
            "SVG images are not supported",
        ),
        (_encode(Image.new("L", (28, 28)), "TIFF"), "TIFF images are not supported"),
        (_encode(Image.new("RGB", (32, 32)), "ICO"), "ICO images are not supported"),
        (_encode(Image.new("RGB", (32, 32)), "PDF"), "PDF images are not supported"),
        (_hand_built_png(0, 28), "corrupt or truncated"),
    ],
    ids=[
        "empty",
        "random",
        "truncated png",
        "truncated png header",
        "svg",
        "tiff",
        "ico",
        "pdf",
        "zero size",
    ],
)
def test_undecodable_bytes_are_422_with_a_hint(data: bytes, expected: str) -> None:
    error = _decode_error(data)
    assert isinstance(error, ImageDecodeError)
    assert str(error).startswith("could not decode image: ")
    assert expected in str(error)
    assert str(error).endswith("send a PNG, JPEG, BMP, WebP or GIF")


@pytest.mark.parametrize(
    "data",
    [
        _encode(Image.new("L", (300, 300), 255), "PNG"),
        _encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG"),
        _encode(Image.new("RGB", (200, 200), (128, 128, 128)), "JPEG", quality=75),
        _encode(Image.new("L", (100, 100), 0), "BMP"),
    ],
    ids=["white png", "transparent png", "grey jpeg", "black bmp"],
)
def test_blank_images_are_422_empty(data: bytes) -> None:
    error = _decode_error(data)
    assert isinstance(error, NoInkError)
    assert str(error).startswith("the image contains no ink (it is blank): draw a digit")


def test_to_mnist_of_zeros_is_empty() -> None:
    with pytest.raises(NoInkError):
        to_mnist(np.zeros((28, 28), dtype=np.float32))


def test_decompression_bomb_is_413_without_allocating() -> None:
    resource = pytest.importorskip("resource")  # Unix only
    bomb = _hand_built_png(50_000, 50_000)  # 2.5 G pixels declared in a ~100-byte file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = _decode_error(bomb)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert isinstance(error, ImageTooLargeError)
    assert "2,500,000,000 pixels" in str(error)
    assert "send a smaller image" in str(error)
    kib = 1 if sys.platform != "darwin" else 1024  # ru_maxrss is KiB on Linux, bytes on macOS
    assert grown < 200 * 1024 * kib  # decoding would need 2.5 GB


def test_image_over_own_limit_is_413_from_the_header() -> None:
    error = _decode_error(_hand_built_png(7_000, 7_000))  # 49 M > DEFAULT_MAX_PIXELS, under Pillow's
    assert isinstance(error, ImageTooLargeError)
    assert "7000x7000 = 49,000,000 pixels" in str(error)
    assert f"limit of {DEFAULT_MAX_PIXELS:,} pixels" in str(error)


def test_max_pixels_is_the_callers_setting() -> None:
    data = _valid_png()  # 40x40
    assert decode_image(data, max_pixels=1_600).size == (40, 40)
    error = _decode_error(data, max_pixels=1_599)
    assert isinstance(error, ImageTooLargeError)


def test_pillow_bomb_warning_as_error_is_413_not_500() -> None:
    """Between Pillow's limit and twice it Pillow warns; where warnings are errors (strict
    test or server settings) that must still come out as a 413."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = _decode_error(_hand_built_png(10_000, 10_000), max_pixels=200_000_000)
    assert isinstance(error, ImageTooLargeError)
    assert "100,000,000 pixels" in str(error)


def test_supported_formats() -> None:
    assert frozenset({"PNG", "JPEG", "BMP", "WEBP", "GIF"}) == SUPPORTED_FORMATS
    assert DEFAULT_MAX_PIXELS == 40_000_000


def test_errors_are_imaging_errors_without_http_statuses() -> None:
    """The package knows no HTTP: the service maps its errors (service/api.py, IMAGING_STATUS)."""
    assert issubclass(ImagingError, ValueError)
    for cls in (ImageDecodeError, ImageTooLargeError, NoInkError, PixelArrayError):
        assert issubclass(cls, ImagingError)
        assert not hasattr(cls, "status_code")


# --- the real model, once it exists ----------------------------------------------------------


def test_model_predicts_redrawn_digits_as_the_originals(
    redrawn: dict[str, np.ndarray], references: np.ndarray
) -> None:
    if not MODEL.exists():
        pytest.skip(f"{MODEL.name} not built yet")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])

    def predict(images: np.ndarray) -> np.ndarray:
        (logits,) = session.run(["logits"], {"pixels": images[:, None].astype(np.float32)})
        labels: np.ndarray = np.argmax(logits, axis=1)
        return labels

    expected = predict(references)
    for variant, outputs in redrawn.items():
        agreement = float(np.mean(predict(outputs) == expected))
        # A borderline digit may flip on a 1-px shift; more than two in 50 is a regression.
        assert agreement >= 0.96, f"{variant}: only {agreement:.0%} of predictions agree"



@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_libspng_and_pillow_decode_the_same_pngs(mode: str, mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """PNGs libspng decodes (8-bit L, RGB, RGBA) give exactly the luminance Pillow gives; the
    rest (palette, grey with alpha, 16-bit, colour-key transparency) go to Pillow."""
    pytest.importorskip("pyspng")
    from PIL import Image

    from service.imaging import decode

    digits, _ = mnist_test_sample
    ink = np.kron(digits[7], np.ones((8, 8), np.uint8))
    channels = {"L": [ink], "RGB": [ink, ink // 2, 255 - ink],
                "RGBA": [ink, ink, ink, np.where(ink > 0, 255, 0).astype(np.uint8)]}
    pixels = np.dstack(channels[mode]) if len(channels[mode]) > 1 else channels[mode][0]
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, "PNG")
    data = out.getvalue()
    assert decode._spng_pixels(data, decode._open(data, decode.DEFAULT_MAX_PIXELS)) is not None
    fast = decode.decode_luma(data).values
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decode, "pyspng", None)
        slow = decode.decode_luma(data).values
    np.testing.assert_array_equal(fast, slow)

    palette = io.BytesIO()
    Image.fromarray(pixels if mode == "L" else pixels[..., 0]).convert("P").save(palette, "PNG")
    assert decode._spng_pixels(palette.getvalue(), decode._open(palette.getvalue(), 10**6)) is None


def _png_bytes(pixels: np.ndarray, mode: str, **params: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "PNG", **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("mode", "depth", "colour"),
    [("L", 8, 0), ("RGB", 8, 2), ("RGBA", 8, 6), ("LA", 8, 4), ("P", 8, 3), ("I;16", 16, 0), ("1", 1, 0)],
)
def test_png_header_reads_what_pillow_reads(mode: str, depth: int, colour: int) -> None:
    """The IHDR reader agrees with Pillow on the size, and gives the PNG's bit depth and colour
    type (the spec's numbers) for every mode Pillow writes; the three that go to libspng are
    the modes Pillow opens them as."""
    from service.imaging.decode import _SPNG_COLOUR_MODES
    from service.imaging.png import PngHeader, png_header

    pixels = (np.arange(37 * 53) % 251).astype(np.uint8).reshape(37, 53)
    data = _png_bytes(pixels, mode)
    assert png_header(data) == PngHeader(53, 37, depth, colour, 0)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.width, image.height) == (53, 37)
        if depth == 8:
            assert _SPNG_COLOUR_MODES.get(colour, image.mode) == image.mode


def test_png_header_refuses_what_is_not_a_well_formed_ihdr() -> None:
    """None (Pillow then reads the file and names the problem) for other formats, a file cut
    short of its header, and a header whose length, type or CRC is wrong."""
    from service.imaging.png import png_header

    data = _png_bytes(np.zeros((4, 4), np.uint8), "L")
    assert png_header(data) is not None
    jpeg = io.BytesIO()
    Image.new("L", (4, 4)).save(jpeg, "JPEG")
    broken_crc = data[:29] + bytes([data[29] ^ 1]) + data[30:]
    wrong_length = data[:11] + b"\x0e" + data[12:]
    wrong_type = data[:12] + b"IHDX" + data[16:]
    odd_interlace = data[:28] + b"\x02" + struct.pack(">I", zlib.crc32(data[12:28] + b"\x02")) + data[33:]
    for bad in (b"", data[:8], data[:32], jpeg.getvalue(), broken_crc, wrong_length, wrong_type, odd_interlace):
        assert png_header(bad) is None


def test_small_png_is_decoded_without_pillow_after_its_size_check() -> None:
    """An 8-bit L/RGB/RGBA PNG up to the working size skips Pillow's header parse, and its
    declared size is still checked before a pixel is decoded: a header lying about its size
    is refused with 413 from the header alone, never decoded."""
    pytest.importorskip("pyspng")
    from service.imaging import decode

    pixels = np.zeros((60, 50), np.uint8)
    pixels[10:40, 20:30] = 255
    data = _png_bytes(pixels, "L")
    assert decode._small_png_pixels(data, DEFAULT_MAX_PIXELS, decode.WORKING_SIDE) is not None
    assert decode._small_png_pixels(data, 60 * 50 - 1, decode.WORKING_SIDE) is None  # refused by _open
    with pytest.raises(ImageTooLargeError):
        decode.decode_luma(data, max_pixels=60 * 50 - 1)
    assert decode._small_png_pixels(data, DEFAULT_MAX_PIXELS, 59) is None  # larger: the shrinking path
    for other in ("LA", "P", "I;16"):
        assert decode._small_png_pixels(_png_bytes(pixels, other), DEFAULT_MAX_PIXELS, decode.WORKING_SIDE) is None
    keyed = _png_bytes(pixels, "L", transparency=0)  # a tRNS chunk: Pillow flattens it
    assert decode._small_png_pixels(keyed, DEFAULT_MAX_PIXELS, decode.WORKING_SIDE) is None

    huge = bytearray(data)  # declares 60 x 50000 pixels, holds 60 x 50
    huge[16:20] = struct.pack(">I", 50_000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    with pytest.raises(ImageTooLargeError):
        decode.decode_luma(bytes(huge), max_pixels=1_000_000)


def test_small_png_with_a_corrupt_metadata_chunk_is_read() -> None:
    """A PNG whose ancillary chunk (text) fails its CRC: libspng skips the chunk and decodes
    the pixels, where Pillow's header parse refuses the file (a large one, going through
    Pillow, is still refused). Pinned here because it is the fast path's one difference."""
    pytest.importorskip("pyspng")
    pixels = np.zeros((60, 50), np.uint8)
    pixels[10:40, 20:30] = 255
    data = _png_bytes(pixels, "L")
    body = b"tEXtComment\x00hello"
    bad = data[:33] + struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) ^ 1) + data[33:]
    np.testing.assert_array_equal(preprocess_image_bytes(bad), preprocess_image_bytes(data))
    with pytest.raises(ImageDecodeError):
        decode_image(bad)


def test_stroke_contrast_is_the_percentile_rule() -> None:
    """`_contrasts` decides as the 90th percentile of the strokes' distance from the colour
    under the transparent pixels does, including when the farthest stroke alone decides."""
    from service.imaging import decode

    rng = np.random.default_rng(3)
    for _ in range(300):
        low = int(rng.integers(0, 256))
        high = min(256, low + int(rng.integers(1, 120)))
        strokes = rng.integers(low, high, int(rng.integers(1, 400))).astype(np.uint8)
        under = float(rng.choice([0.0, 255.0, float(rng.integers(0, 256)), float(rng.integers(0, 255)) + 0.5]))
        expected = bool(np.percentile(np.abs(strokes - np.float32(under)), 90) >= decode._STROKE_CONTRAST)
        assert decode._contrasts(strokes, under) == expected


# --- the image data inflated by ISA-L (service/imaging/png.py) -----------------------------------------


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG."""
    chunks, position = [], 8
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        chunks.append((data[position + 4 : position + 8], data[position + 8 : position + 8 + length]))
        position += 12 + length
    return chunks


def _png_of(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks
    )


def _stroke_canvas(seed: int, side: int = 280) -> np.ndarray:
    """RGBA strokes on a transparent canvas, as a drawing pad exports them."""
    import cv2

    rng = np.random.default_rng(seed)
    canvas = np.zeros((side, side, 4), np.uint8)
    points = rng.integers(side // 5, 4 * side // 5, (6, 2)).astype(np.int32)
    cv2.polylines(canvas, [points], False, (20, 20, 20, 255), int(rng.integers(6, 20)), cv2.LINE_AA)
    return canvas


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "1"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_stored_image_data_decodes_to_the_same_pixels(mode: str, level: int) -> None:
    """Every colour type, bit depth and compression level: the re-stored file decodes to exactly
    the pixels of the original, by libspng and by Pillow, and holds one stored IDAT chunk."""
    pyspng = pytest.importorskip("pyspng")
    from service.imaging.png import png_header, with_stored_data

    rgba = _stroke_canvas(level, side=600)  # enough image data for every mode, 1-bit included
    rgba[..., :3] = np.random.default_rng(1).integers(0, 256, rgba[..., :3].shape)  # colour: every filter type
    data = _png_bytes(rgba, mode, compress_level=level)
    header = png_header(data)
    assert header is not None
    stored = with_stored_data(data, header)
    assert stored is not None
    idat = [body for kind, body in _chunks(stored) if kind == b"IDAT"]
    assert len(idat) == 1 and idat[0][2] & 0b110 == 0  # one chunk of stored (uncompressed) deflate blocks
    assert zlib.decompress(idat[0]) == zlib.decompress(b"".join(b for k, b in _chunks(data) if k == b"IDAT"))
    with Image.open(io.BytesIO(data)) as original, Image.open(io.BytesIO(stored)) as restored:
        assert original.mode == restored.mode
        np.testing.assert_array_equal(np.asarray(original), np.asarray(restored))
    if mode in ("L", "RGB", "RGBA"):
        np.testing.assert_array_equal(pyspng.load(stored, mode), pyspng.load(data, mode))


def test_stored_image_data_joins_many_idat_chunks_and_keeps_the_other_chunks() -> None:
    """A large noisy image, whose encoder writes many IDAT chunks, with text chunks before and
    after them: one IDAT with all the data, the other chunks as they were, the same pixels."""
    pyspng = pytest.importorskip("pyspng")
    from PIL import PngImagePlugin

    from service.imaging.png import png_header, with_stored_data

    pixels = np.random.default_rng(2).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "a drawing pad")
    data = _png_bytes(pixels, "RGB", pnginfo=info)
    data = _png_of([*_chunks(data)[:-1], (b"tEXt", b"Comment\x00after the pixels"), (b"IEND", b"")])
    assert [kind for kind, _ in _chunks(data)].count(b"IDAT") > 1
    header = png_header(data)
    assert header is not None
    stored = with_stored_data(data, header)
    assert stored is not None
    kinds = [kind for kind, _ in _chunks(stored)]
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"tEXt", b"IEND"]
    np.testing.assert_array_equal(pyspng.load(stored, "RGB"), pixels)


def _interlaced_png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG written with Adam7 interlacing (Pillow writes none), rows unfiltered."""
    height, width = pixels.shape[:2]
    rows = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        part = pixels[y0::dy, x0::dx]
        if part.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in part)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 1)
    return _png_of([(b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")])


@pytest.mark.parametrize("size", [(150, 150), (161, 203), (1200, 9)])
def test_interlaced_image_data_is_stored_at_its_exact_size(size: tuple[int, int]) -> None:
    """An interlaced PNG's seven passes are sized exactly (odd sides, a tall thin image): its data
    is re-stored, and decodes to the pixels it was written from."""
    pyspng = pytest.importorskip("pyspng")
    from service.imaging.png import png_header, with_stored_data

    pixels = np.random.default_rng(5).integers(0, 256, (*size, 4), dtype=np.uint8)
    data = _interlaced_png(pixels)
    header = png_header(data)
    assert header is not None and header.interlace == 1
    np.testing.assert_array_equal(pyspng.load(data, "RGBA"), pixels)  # the test's own writer is right
    stored = with_stored_data(data, header)
    assert stored is not None
    np.testing.assert_array_equal(pyspng.load(stored, "RGBA"), pixels)
    with Image.open(io.BytesIO(stored)) as image:
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_small_and_large_images_keep_their_own_image_data() -> None:
    """Below STORE_FROM_BYTES of image data (an MNIST-sized digit) libspng inflates it itself, and
    above STORE_UP_TO_BYTES (a large photo: no transient copies of its data)."""
    from service.imaging.png import STORE_FROM_BYTES, STORE_UP_TO_BYTES, png_header, with_stored_data

    small = _png_bytes(_stroke_canvas(4, side=28), "RGBA")
    header = png_header(small)
    assert header is not None and header.height * (header.width * 4 + 1) < STORE_FROM_BYTES
    assert with_stored_data(small, header) is None
    large = _png_bytes(np.zeros((1500, 1500, 4), np.uint8), "RGBA")
    header = png_header(large)
    assert header is not None and header.height * (header.width * 4 + 1) > STORE_UP_TO_BYTES
    assert with_stored_data(large, header) is None


def test_stored_image_data_is_refused_for_anything_amiss() -> None:
    """None, so that the original is decoded and its fault named as before: a failing IDAT CRC,
    a corrupt or truncated stream (the Adler-32 checksum included), image data split by another
    chunk, data after the stream, a file cut short, no image data, and a stream inflating to more
    than the header allows (never inflated past that)."""
    from service.imaging.png import png_header, with_stored_data

    data = _png_bytes(_stroke_canvas(3), "RGBA")
    chunks = _chunks(data)
    at = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    stream = chunks[at][1]
    header = png_header(data)
    assert header is not None and with_stored_data(data, header) is not None

    def with_idat(*bodies: bytes) -> bytes:
        return _png_of([*chunks[:at], *((b"IDAT", body) for body in bodies), *chunks[at + 1 :]])

    bad_crc = bytearray(data)
    crc_at = data.index(b"IDAT") + 4 + len(stream)
    bad_crc[crc_at] ^= 1
    bad_adler = stream[:-1] + bytes([stream[-1] ^ 1])
    split = _png_of([*chunks[:at], (b"IDAT", stream[:10]), (b"tEXt", b"a\x00b"), (b"IDAT", stream[10:]),
                     *chunks[at + 1 :]])
    bomb = zlib.compress(bytes(header.height * (header.width * 4 + 1) + 1_000_000))
    for bad in (bytes(bad_crc), with_idat(bad_adler), with_idat(stream[:-20]), split, with_idat(stream + b"junk"),
                data[: data.index(b"IDAT") + 100], _png_of([c for c in chunks if c[0] != b"IDAT"]), with_idat(bomb)):
        assert with_stored_data(bad, header) is None
    assert with_idat(stream[:10], stream[10:]) != data  # two IDAT chunks in a row are fine
    assert with_stored_data(with_idat(stream[:10], stream[10:]), header) is not None


@pytest.mark.parametrize(("module", "attribute"), [("png", "isal_zlib"), ("spng", "_LIB")])
def test_canvas_uploads_decode_the_same_without_a_fast_path(
    monkeypatch: pytest.MonkeyPatch, module: str, attribute: str
) -> None:
    """Through the whole decoding (decode_luma) the drawing pad's PNG gives the same luminance, and a
    corrupt one the same error, whether ISA-L inflates it or libspng does (png.isal_zlib), and whether
    libspng is called through its C API or through pyspng's binding, as where another pyspng build
    does not export its functions (spng._LIB)."""
    pytest.importorskip("pyspng")
    import importlib

    from service.imaging import decode

    canvases = [_png_bytes(_stroke_canvas(seed), "RGBA") for seed in range(5)]
    corrupt = bytearray(canvases[0])
    corrupt[corrupt.index(b"IDAT") + 30] ^= 0xFF
    fast = [decode.decode_luma(data).values for data in canvases]
    with pytest.raises(ImageDecodeError) as error_fast:
        decode.decode_luma(bytes(corrupt))
    monkeypatch.setattr(importlib.import_module(f"service.imaging.{module}"), attribute, None)
    for data, values in zip(canvases, fast, strict=True):
        np.testing.assert_array_equal(decode.decode_luma(data).values, values)
    with pytest.raises(ImageDecodeError) as error_slow:
        decode.decode_luma(bytes(corrupt))
    assert str(error_fast.value) == str(error_slow.value)


# --- libspng through its C API (service/imaging/spng.py) ------------------------------------


@pytest.mark.parametrize(("mode", "interlace"),
                         [("L", False), ("RGB", False), ("RGBA", False), ("RGBA", True)])
def test_spng_load_gives_the_pixels_pyspng_gives(mode: str, interlace: bool) -> None:
    """Called through its C API, libspng decodes each colour type the service hands it (grey,
    RGB, RGBA; the rest go to Pillow) to exactly pyspng's pixels,
    from the file as written and from its image data re-stored uncompressed."""
    pyspng = pytest.importorskip("pyspng")
    from service.imaging import spng
    from service.imaging.png import png_header, with_stored_data

    if not spng.available():
        pytest.skip("this pyspng build does not export libspng's functions")
    canvas = _stroke_canvas(3, side=200)
    canvas[..., 1] = np.arange(200, dtype=np.uint8)[None, :]  # channels that differ
    data = _interlaced_png(canvas) if interlace else _png_bytes(canvas, mode)
    header = png_header(data)
    assert header is not None and header.interlace == int(interlace)
    for source in (data, with_stored_data(data, header)):
        assert source is not None
        pixels = spng.load(source, mode, header.width, header.height)
        assert pixels is not None and pixels.flags.c_contiguous
        np.testing.assert_array_equal(pixels, pyspng.load(source, mode))


def test_spng_load_refuses_what_it_cannot_decode() -> None:
    """None, never an exception or a crash, for a file cut short, one whose header declares
    another size than the caller read, and bytes that are no PNG: Pillow then decodes them and
    names what is wrong."""
    pytest.importorskip("pyspng")
    from service.imaging import spng

    if not spng.available():
        pytest.skip("this pyspng build does not export libspng's functions")
    data = _png_bytes(_stroke_canvas(1, side=64), "RGBA")
    assert spng.load(data, "RGBA", 64, 64) is not None
    assert spng.load(data[: len(data) // 2], "RGBA", 64, 64) is None
    assert spng.load(data, "RGBA", 63, 64) is None
    assert spng.load(data, "L", 64, 64) is None  # libspng gives grey only from a grey PNG, as pyspng
    assert spng.load(b"not a png at all", "L", 1, 1) is None
    assert spng.load(b"", "L", 1, 1) is None
