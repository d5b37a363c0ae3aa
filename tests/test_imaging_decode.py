"""service/preprocess.py: real MNIST digits redrawn the ways users send them, and bad inputs.

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

from service.preprocess import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    PixelArrayError,
    PreprocessError,
    decode_image,
    pixels_to_batch,
    preprocess_image_bytes,
    to_grayscale,
    to_mnist,
)

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
    """preprocess_image_bytes shrinks images longer than 2048 px before finding the ink."""
    for digit in digits[[7, 11]]:
        data = _wide_image(digit, mode)
        full_size = to_mnist(to_grayscale(decode_image(data)))
        assert _similarity(preprocess_image_bytes(data), full_size, blur=True) > 0.98


# --- to_grayscale across modes -----------------------------------------------------------


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
def test_to_grayscale_every_mode_gives_white_ink_on_black(mode: str) -> None:
    image = _mode_image(mode)
    assert image.mode == mode
    gray = to_grayscale(image)
    assert gray.shape == (40, 40)
    assert gray.dtype == np.float32
    bar = _bar_image() == 0
    assert gray[bar].min() > 200  # ink high
    assert gray[~bar].max() == 0.0  # background exactly 0
    assert gray.max() == pytest.approx(255.0)
    np.testing.assert_array_equal(gray, _whole_image_gray(image))


def test_to_grayscale_light_ink_on_dark_paper_is_not_inverted() -> None:
    gray = to_grayscale(Image.fromarray(255 - _bar_image()))
    np.testing.assert_array_equal(gray, to_grayscale(Image.fromarray(_bar_image())))


def test_to_grayscale_fully_transparent_is_blank() -> None:
    assert not to_grayscale(Image.new("RGBA", (50, 50), (0, 0, 0, 0))).any()


# --- the fast path gives the pixels of the whole-image algorithm ---------------------------
#
# preprocess.py reads the paper's tone from histograms, converts only the box around a
# canvas's strokes and works on the rectangle that can hold ink. _whole_image_gray is the
# algorithm as first written, every step on the whole image with np.median and
# np.percentile: the fast path must give exactly its pixels.


def _whole_image_gray(image: Image.Image) -> np.ndarray:
    """to_grayscale the straightforward way: float32 [H,W], ink 0..255, background 0."""
    return _whole_image_ink(_whole_image_luma(image))


def _whole_image_luma(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float32)
        if image.mode == "F":
            np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            peak = float(values.max(initial=0.0))
            scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / peak)
            return np.clip(values, 0.0, None) * np.float32(scale)
        if image.mode == "I" and float(values.max(initial=0.0)) <= 255.0:
            return np.clip(values, 0.0, 255.0)
        return np.clip(values, 0.0, 65535.0) * np.float32(255.0 / 65535.0)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _whole_image_composite(image)
    if image.mode == "LAB":
        return np.asarray(image.getchannel("L"), dtype=np.float32)
    try:
        gray = image.convert("L")
    except ValueError:
        gray = image.convert("RGBA").convert("L")
    return np.asarray(gray, dtype=np.float32)


def _lower_median(values: np.ndarray) -> float:
    cumulative = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(cumulative, (cumulative[-1] + 1) // 2))


def _whole_image_composite(image: Image.Image) -> np.ndarray:
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    luma = np.asarray(image.convert("L"))
    alpha = np.asarray(image.getchannel("A"))
    coverage = float(alpha.mean()) / 255.0
    if coverage >= 1.0:
        return luma.astype(np.float32)
    if coverage <= 0.0:
        return np.zeros(luma.shape, dtype=np.float32)
    opaque = alpha >= 128
    if coverage >= 0.5:
        background = _lower_median(luma[opaque])
    else:
        strokes = luma[opaque] if opaque.any() else luma[alpha > 0]
        hidden = luma[alpha == 0]
        under = _lower_median(hidden) if hidden.size else None
        if under is not None and np.percentile(np.abs(strokes - np.float32(under)), 90) >= 64.0:
            background = under
        else:
            background = 255.0 if float(strokes.mean()) < 127.5 else 0.0
    weight = alpha.astype(np.float32) * np.float32(1 / 255)
    return np.float32(background) + weight * (luma - np.float32(background))


def _whole_image_ink(luma: np.ndarray) -> np.ndarray:
    height, width = luma.shape
    ring = max(1, round(min(height, width) / 32))
    strips = (luma[:ring], luma[-ring:], luma[:, :ring], luma[:, -ring:])
    border = np.concatenate([strip.ravel() for strip in strips])
    background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    ink = luma - np.float32(background)
    lightest, darkest = float(ink.max()), -float(ink.min())
    floor = 0.25 * max(lightest, darkest)

    def mass(values: np.ndarray) -> float:
        strong = values[values > floor]
        return float(strong.sum()) - floor * strong.size

    if darkest > lightest:
        dark_ink = lightest < floor or mass(-ink) > mass(ink)
    else:
        dark_ink = darkest >= floor and mass(-ink) > mass(ink)
    if dark_ink:
        np.negative(ink, out=ink)
    np.maximum(ink, 0.0, out=ink)
    peak = max(darkest if dark_ink else lightest, 0.0)
    threshold = max(0.1 * peak, 5.0 * noise)
    if peak < 16.0 or peak < 2.0 * threshold:
        return np.zeros_like(luma)
    ink[ink < threshold] = 0.0
    inked = np.pad(ink > 0.0, 1)
    neighbours = sum(
        np.roll(inked, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )[1:-1, 1:-1]
    ink[neighbours == 0] = 0.0  # specks: ink with no ink around it
    ink *= np.float32(255.0 / peak)
    return ink


def _assert_same_as_whole_image(data: bytes) -> None:
    expected = _whole_image_gray(decode_image(data))
    gray = to_grayscale(decode_image(data))
    assert gray.dtype == np.float32
    np.testing.assert_array_equal(gray, expected)
    if expected.any():
        np.testing.assert_array_equal(preprocess_image_bytes(data), to_mnist(expected))
    else:
        with pytest.raises(EmptyImageError):
            preprocess_image_bytes(data)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_path_gives_the_whole_image_pixels(variant: str, encoded: dict[str, list[bytes]]) -> None:
    for data in encoded[variant][:10]:
        _assert_same_as_whole_image(data)


def _rgba(pixels: np.ndarray) -> bytes:
    return _encode(Image.fromarray(pixels), "PNG")


def _stroked_frame() -> bytes:
    """Opaque black strokes around three edges of a transparent canvas: the ring is mostly
    strokes, so the untouched pixels outside the strokes' box are the (light) ink."""
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[:3, :95, 3] = rgba[-3:, :95, 3] = rgba[:, :3, 3] = 255
    rgba[40:60, 40:45, 3] = 255
    return _rgba(rgba)


def _strokes_through_the_ring(digit: np.ndarray) -> bytes:
    """A canvas drawn to its edges: the border ring crosses the strokes."""
    alpha = _upscale(digit, 10)[40:240, 30:250]
    rgba = np.zeros((*alpha.shape, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return _rgba(rgba)


def _stroke_tone_near_the_contrast_limit() -> bytes:
    """Strokes whose 90th-percentile contrast against the hidden colour falls between two
    grey levels around the limit, so np.percentile's interpolation decides it."""
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[10:30, 18:21] = (63, 63, 63, 255)
    rgba[10:13, 21] = (65, 65, 65, 255)
    rgba[13:30, 21] = (63, 63, 63, 255)
    return _rgba(rgba)


def _colour_keyed_canvas(left: int, black_block: bool) -> bytes:
    """Strokes of two greys; the transparent pixels around them white inside a box,
    transparent black beyond it, with or without a transparent black block inside: the
    colour under the transparent pixels (their median) decides the paper."""
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[5:95, left:95, :3] = 255
    if black_block:
        rgba[10:60, 10:80] = 0
    rgba[70:80, 40:50] = (100, 100, 100, 255)
    rgba[80:90, 40:50] = (160, 160, 160, 255)
    return _rgba(rgba)


def _ring_partly_stroked() -> bytes:
    """Black strokes over the left of the border ring, the right of the canvas untouched
    transparent black: the ring's median is the paper (white), though a minority of it."""
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[:, :3, 3] = 255
    rgba[:3, :40, 3] = rgba[-3:, :40, 3] = 255
    rgba[30:70, 30:36, 3] = 255
    rgba[3:-3, 3:70, :3] = 255  # transparent white up to column 70, the box's right edge
    return _rgba(rgba)


def _grainy_edges(digit: np.ndarray) -> bytes:
    """Paper grainier at its very edge than inside, so the width of the border ring sets
    the noise level, and the noise (not the ink's contrast) sets the threshold."""
    rng = np.random.default_rng(5)
    paper = 128 + rng.normal(0.0, 2.0, (64, 64))
    paper[:2] += rng.normal(0.0, 10.0, (2, 64))
    paper[-2:] += rng.normal(0.0, 10.0, (2, 64))
    paper[:, :2] += rng.normal(0.0, 10.0, (64, 2))
    paper[:, -2:] += rng.normal(0.0, 10.0, (64, 2))
    paper[4:60, 4:60] -= 120 * _upscale(digit, 2).astype(np.float64) / 255
    return _encode(Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)), "PNG")


def _two_tone_paper(side: int) -> bytes:
    """Paper of two close tones split at the middle: the ring's median falls between them."""
    gray = np.full((side, side), 120, dtype=np.uint8)
    gray[side // 2 :] = 124
    gray[side // 4 : 3 * side // 4, side // 2 - side // 10 : side // 2 + side // 10] = 10
    return _encode(Image.fromarray(gray), "PNG")


def _faint_dark_blotch_beside_a_bright_dot() -> bytes:
    """More dark mass than light, but the dark side is too faint to be ink: blank."""
    gray = np.full((120, 120), 100, dtype=np.uint8)
    gray[40:80, 40:80] = 88
    gray[60:62, 60:62] = 140
    return _encode(Image.fromarray(gray), "PNG")


def _dark_digit_beside_brighter_glare(digit: np.ndarray) -> bytes:
    """Grey paper with a dark digit and a smaller but brighter glare: the masses decide."""
    paper = np.full((240, 320), 128.0)
    paper[30:198, 40:208] -= 88 * _upscale(digit, 6).astype(np.float64) / 255
    paper[100:120, 260:280] = 240
    noise = np.random.default_rng(3).normal(0.0, 2.0, paper.shape)
    return _encode(Image.fromarray(np.clip(paper + noise, 0, 255).astype(np.uint8)), "PNG")


@pytest.mark.parametrize(
    "make",
    [
        lambda d: _stroked_frame(),
        _strokes_through_the_ring,
        lambda d: _stroke_tone_near_the_contrast_limit(),
        lambda d: _colour_keyed_canvas(5, black_block=False),
        lambda d: _colour_keyed_canvas(25, black_block=False),
        lambda d: _colour_keyed_canvas(5, black_block=True),
        lambda d: _ring_partly_stroked(),
        _grainy_edges,
        lambda d: _two_tone_paper(40),
        lambda d: _two_tone_paper(300),
        lambda d: _faint_dark_blotch_beside_a_bright_dot(),
        _dark_digit_beside_brighter_glare,
        lambda d: _encode(Image.fromarray(d[10:13, 8:13]), "PNG"),
        lambda d: _encode(Image.fromarray(np.pad(255 - d, 300, constant_values=255)), "JPEG", quality=60),
    ],
    ids=[
        "stroked frame on a transparent canvas",
        "strokes through the border ring",
        "stroke contrast at the limit",
        "colour-keyed canvas",
        "colour-keyed canvas in a smaller box",
        "colour-keyed canvas with a transparent black block",
        "border ring partly stroked",
        "paper grainy at the edges",
        "two-tone paper, small",
        "two-tone paper, large",
        "faint dark blotch beside a bright dot",
        "dark digit beside brighter glare",
        "tiny 3x5 crop",
        "digit in the middle of a large jpeg",
    ],
)
def test_fast_path_gives_the_whole_image_pixels_at_the_edges(
    make: Callable[[np.ndarray], bytes], digits: np.ndarray
) -> None:
    _assert_same_as_whole_image(make(digits[4]))


def _fingerprint(outputs: np.ndarray) -> np.ndarray:
    """[N,28,28] -> (ink mass, row moment, column moment, a fixed +-1 projection)."""
    values = outputs.astype(np.float64)
    centred = np.arange(_SIDE) - 13.5
    index = np.arange(values.size)
    signs = np.where((index * 2654435761) % 4093 < 2047, 1.0, -1.0)
    return np.array(
        [values.sum(), values.sum(axis=(0, 2)) @ centred, values.sum(axis=(0, 1)) @ centred, values.ravel() @ signs]
    )


_SIDE = 28
# _fingerprint of the N_DIGITS outputs of each variant as preprocess_image_bytes gave them
# before the fast path (whole-image statistics): the outputs must not have moved since.
STORED_FINGERPRINTS: dict[str, tuple[float, float, float, float]] = {
    "png 10x centred on 300x300": (1016695.0, 547846.8, 593184.9, -3562.7),
    "png 5x in the top-left corner of 640x480": (1011328.6, 518212.8, 574405.0, -973.5),
    "png 3x in the bottom-right corner": (1024021.0, 517453.7, 535591.8, -2635.1),
    "png 2x small in a corner of 800x600": (991245.0, 530646.0, 550423.6, -2232.9),
    "png inverted (black ink on white)": (1041354.5, 519562.4, 590247.1, -1900.9),
    "rgba canvas, black strokes on transparent": (1016695.0, 547846.8, 593184.9, -3562.7),
    "rgba canvas, white strokes on transparent": (1016695.0, 547846.8, 593184.9, -3562.7),
    "rgba canvas, blue strokes on transparent": (1016695.0, 547846.8, 593184.9, -3562.7),
    "rgba canvas filled white, black strokes": (1016204.0, 523180.7, 565558.5, -1972.0),
    "rgba screenshot with transparent margin": (1016204.0, 523180.7, 565558.5, -1972.0),
    "gif palette, black on white": (1024129.8, 513437.6, 582400.7, -3133.9),
    "gif animated (first frame)": (1023574.8, 537648.7, 586050.9, -2965.6),
    "gif transparent canvas, black strokes": (1051327.2, 552125.2, 595417.2, -3822.0),
    "png palette with transparency": (1023574.8, 537648.7, 586050.9, -2965.6),
    "png 16-bit": (1011328.6, 518212.8, 574405.0, -973.5),
    "png 1-bit": (1144680.0, 582111.6, 672805.0, -639.0),
    "jpeg cmyk": (1023822.7, 535580.9, 581872.3, -3009.1),
    "bmp rgb": (1023574.8, 537648.7, 586050.9, -2965.6),
    "webp lossy": (1024164.3, 546524.6, 542467.7, -2498.7),
    "jpeg q75 off-centre": (1022181.5, 495072.7, 578146.4, -2360.4),
    "jpeg grey paper with noise": (1019160.8, 540021.6, 558092.5, -2424.1),
    "jpeg with exif rotation": (1023806.4, 535615.9, 584388.8, -2898.6),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_redrawn_digits_give_the_stored_outputs(variant: str, redrawn: dict[str, np.ndarray]) -> None:
    outputs = redrawn[variant]
    assert outputs.shape == (N_DIGITS, _SIDE, _SIDE)
    # One digit of the 50 shifted by a pixel moves a moment by about 1.4x the outputs' norm;
    # float rounding and decoder builds move the fingerprint by well under a tenth of it.
    tolerance = 0.1 * float(np.linalg.norm(outputs))
    np.testing.assert_allclose(_fingerprint(outputs), STORED_FINGERPRINTS[variant], rtol=0, atol=tolerance)


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


def _decode_error(data: bytes, **kwargs: int) -> PreprocessError:
    with pytest.raises(PreprocessError) as caught:
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
    assert error.status_code == 422
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
    assert isinstance(error, EmptyImageError)
    assert error.status_code == 422
    assert str(error).startswith("the image contains no ink (it is blank): draw a digit")


def test_to_mnist_of_zeros_is_empty() -> None:
    with pytest.raises(EmptyImageError):
        to_mnist(np.zeros((28, 28), dtype=np.float32))


def test_decompression_bomb_is_413_without_allocating() -> None:
    resource = pytest.importorskip("resource")  # Unix only
    bomb = _hand_built_png(50_000, 50_000)  # 2.5 G pixels declared in a ~100-byte file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    error = _decode_error(bomb)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert isinstance(error, ImageTooLargeError)
    assert error.status_code == 413
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
    assert error.status_code == 413


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


def test_error_classes_carry_status_codes() -> None:
    assert issubclass(PreprocessError, ValueError)
    for cls in (ImageDecodeError, EmptyImageError, PixelArrayError):
        assert issubclass(cls, PreprocessError)
        assert cls.status_code == 422
    assert issubclass(ImageTooLargeError, PreprocessError)
    assert ImageTooLargeError.status_code == 413


# --- JSON pixel arrays ------------------------------------------------------------------------


def test_pixels_one_image(digits: np.ndarray) -> None:
    batch = pixels_to_batch(digits[0].tolist())
    assert batch.shape == (1, 1, 28, 28)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, 0], digits[0])  # taken as is, not re-processed


def test_pixels_list_of_images(digits: np.ndarray) -> None:
    batch = pixels_to_batch([d.tolist() for d in digits[:3]])
    assert batch.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(batch[:, 0], digits[:3])


def test_pixels_accepts_arrays_and_floats(digits: np.ndarray) -> None:
    assert pixels_to_batch(digits[:2]).shape == (2, 1, 28, 28)
    assert pixels_to_batch((digits[0] / 1.0).tolist()).shape == (1, 1, 28, 28)


def test_integer_and_float_pixels_read_the_same(digits: np.ndarray) -> None:
    # Whole numbers 0..255 take a faster conversion than other numbers: the results must not differ.
    ints, floats = [d.tolist() for d in digits[:3]], [(d / 1.0).tolist() for d in digits[:3]]
    np.testing.assert_array_equal(pixels_to_batch(ints), pixels_to_batch(floats))
    np.testing.assert_array_equal(pixels_to_batch(ints[0]), pixels_to_batch(floats[0]))
    assert pixels_to_batch(ints).flags.writeable
    assert pixels_to_batch(_with(12.5))[0, 0, 3, 5] == 12.5  # one non-integer: the general path, same answer
    assert pixels_to_batch(_with(True))[0, 0, 3, 5] == 1.0  # a bool reads as NumPy reads it, on both paths
    assert pixels_to_batch(_with(255))[0, 0, 3, 5] == 255.0


def _zeros() -> list[list[float]]:
    return [[0] * 28 for _ in range(28)]


def _with(value: object, row: int = 3, column: int = 5) -> list[list[object]]:
    image: list[list[object]] = [list(r) for r in _zeros()]
    image[row][column] = value
    return image


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        ([[0] * 28] * 27, "expected a 28x28 array or a list of 28x28 arrays, got shape (27, 28)"),
        ([[[0] * 28] * 28] * 2 + [[[0] * 27] * 28], "ragged"),
        ([[0] * 28] * 27 + [[0] * 27], "ragged"),
        ([], "got shape (0,)"),
        (5, "got shape ()"),
        ([[[[0] * 28] * 28]], "got shape (1, 1, 28, 28)"),
        ([["a"] * 28] * 28, "values must be numbers between 0 and 255; could not convert string"),
        (_with({"r": 1}), "values must be numbers between 0 and 255; float() argument"),
        (
            _with(None),
            "values must be finite numbers between 0 and 255; found null at image 0, row 3, column 5",
        ),
        (_with(float("nan")), "finite numbers between 0 and 255; found nan at image 0, row 3, column 5"),
        (_with(float("inf")), "finite numbers between 0 and 255; found inf at image 0, row 3, column 5"),
        (
            _with(10**40),
            f"finite numbers between 0 and 255; found {10**40} at image 0",
        ),
        (_with(300), "values must be between 0 and 255; found 300.0 at image 0, row 3, column 5"),
        (_with(256), "values must be between 0 and 255; found 256.0 at image 0, row 3, column 5"),
        (_with(-1), "values must be between 0 and 255; found -1.0 at image 0, row 3, column 5"),
        (_with(10**30), "values must be between 0 and 255; found 1e+30"),
        ([_zeros(), _with(255.5, 27, 0)], "found 255.5 at image 1, row 27, column 0"),
    ],
    ids=[
        "27 rows",
        "ragged images",
        "ragged rows",
        "empty",
        "scalar",
        "4-d",
        "strings",
        "object",
        "null",
        "nan",
        "inf",
        "overflow",
        "300",
        "256",
        "-1",
        "huge int",
        "second image",
    ],
)
def test_bad_pixel_arrays_are_422(pixels: object, expected: str) -> None:
    with pytest.raises(PixelArrayError) as caught:
        pixels_to_batch(pixels)
    assert caught.value.status_code == 422
    assert expected in str(caught.value)


def test_pixels_at_the_limits_are_accepted() -> None:
    batch = pixels_to_batch(_with(255))
    assert batch.max() == 255.0
    assert batch.min() == 0.0


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
