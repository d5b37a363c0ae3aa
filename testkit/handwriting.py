"""Seeded generators of handwriting as people send it, built from real MNIST digits.

Each generator takes MNIST digits (uint8 [N,28,28], white ink on black; use the *test* split,
which the shipped models never trained on), their labels and a seed, and yields `Sample`s:
the encoded file, the text it shows and the ink's boxes in the file's pixels. The same seed
gives the same bytes.

* `photos`: a phone photo of pen on paper. Paper grey to cream (levels 150-235, slightly
  tinted); light varying across the page (a linear gradient of up to +-25 %, a vignette
  darkening the corners by up to 30 %, in about a third of photos a soft shadow edge
  darkening part of the page by 15-35 %); black, grey or blue pen; rotation up to +-8 degrees;
  blur sigma 0.3-1.5, then noise sigma 2-8; JPEG quality 60-92; frames from 320x240 to
  800x600 (landscape or portrait); the digit 35-80 % of the short side, anywhere.
  `empty_photos` are the same pages without a digit.
* `canvases`: the drawing page's export: round-capped strokes, white on black (the page) or
  dark strokes on a transparent canvas, the digit 40-90 % of the pad, anywhere.
* `scans`: flat-bed scans: white paper, dark ink, slight rotation and noise, greyscale PNG;
  a third are binarised, a third are tiny 32x32 bitmaps (as in the UCI digit scans).
* `numbers`: 2-6 digits side by side, half canvas drawings, half photos: uneven gaps (from
  8 % of the digit height), mixed sizes (+-20 %) and baselines (+-12 % of the height), and
  about a quarter of the digits drawn in two pieces (a stroke broken across).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["Sample", "canvases", "empty_photos", "numbers", "photos", "scans"]

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True, slots=True)
class Sample:
    """One generated file: its bytes, the text it shows ("" for an empty page), the ink's box
    of each digit (left to right, in the file's pixels) and a short description."""

    data: bytes
    text: str
    boxes: tuple[Box, ...]
    kind: str


# --- single digits ---------------------------------------------------------------------------


def photos(digits: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Iterator[Sample]:
    """`count` phone-style photos of single digits (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        i = int(rng.integers(len(digits)))
        ink = _rotated(_crop(digits[i]), rng)
        frame = _frame(rng)
        size = rng.uniform(0.35, 0.8) * min(frame)
        ink = _scaled(ink, size / max(ink.shape))
        alpha, box = _placed(ink, frame, rng)
        yield Sample(_photo(alpha, rng), str(int(labels[i])), (box,), "photo")


def empty_photos(count: int, seed: int) -> Iterator[Sample]:
    """`count` photos of empty paper, lit as `photos` are."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        width, height = _frame(rng)
        yield Sample(_photo(np.zeros((height, width), np.float32), rng), "", (), "empty photo")


def canvases(
    digits: np.ndarray, labels: np.ndarray, count: int, seed: int, *, lifted: bool = False
) -> Iterator[Sample]:
    """`count` drawing-pad exports of single digits (see the module docstring); `lifted`: each
    digit drawn in two pieces, a stroke broken across as in `numbers`."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        i = int(rng.integers(len(digits)))
        side = int(rng.choice([200, 280, 400]))
        digit = _broken(digits[i], rng) if lifted else digits[i]
        ink = _stroked(_scaled(_crop(digit), rng.uniform(0.4, 0.9) * side / 20.0))
        alpha, box = _placed(ink, (side, side), rng)
        yield Sample(_canvas(alpha, rng), str(int(labels[i])), (box,), "lifted canvas" if lifted else "canvas")


def scans(digits: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Iterator[Sample]:
    """`count` scan-style images of single digits (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        i = int(rng.integers(len(digits)))
        ink = _rotated(_crop(digits[i]), rng, degrees=3.0)
        style = int(rng.integers(3))
        if style == 2:  # a 32x32 bitmap, the digit filling it as in the UCI scans
            ink = _scaled(ink, 30.0 / max(ink.shape))
            frame = (32, 32)
        else:
            ink = _scaled(ink, rng.uniform(2.0, 5.0))
            frame = (ink.shape[1] + int(rng.integers(8, 60)), ink.shape[0] + int(rng.integers(8, 60)))
        alpha, box = _placed(ink, frame, rng)
        if style > 0:
            alpha = (alpha > 0.5).astype(np.float32)
        paper = rng.uniform(225, 255)
        pixels = paper - alpha * (paper - rng.uniform(0, 60))
        if style < 2:
            pixels += rng.normal(0.0, rng.uniform(0.0, 3.0), pixels.shape)
        yield Sample(_png(np.clip(pixels, 0, 255).astype(np.uint8)), str(int(labels[i])), (box,), "scan")


# --- numbers ---------------------------------------------------------------------------------


def numbers(digits: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Iterator[Sample]:
    """`count` numbers of 2-6 digits, alternately canvas drawings and photos."""
    rng = np.random.default_rng(seed)
    for n in range(count):
        picks = rng.integers(len(digits), size=int(rng.integers(2, 7)))
        photo = n % 2 == 1
        height = 28.0 * rng.uniform(2.5, 5.0) if not photo else 100.0  # digit height before fitting
        pieces, tops, lefts = [], [], []
        x = 0.0
        for k, i in enumerate(picks):
            ink = _crop(_broken(digits[i], rng) if rng.random() < 0.25 else digits[i])
            if photo:
                ink = _rotated(ink, rng, degrees=4.0)
            size = height * rng.uniform(0.8, 1.2)
            ink = _scaled(ink, size / ink.shape[0])
            if k:
                x += height * rng.uniform(0.08, 0.45)  # the gap between this ink and the last
            pieces.append(ink)
            tops.append(height * (0.2 + rng.uniform(-0.12, 0.12)) + (height * 1.2 - size))
            lefts.append(x)
            x += ink.shape[1]
        margin = height * 0.3
        sheet_h = math.ceil(max(t + p.shape[0] for t, p in zip(tops, pieces, strict=False)) + margin)
        sheet_w = math.ceil(x + 2 * margin)
        sheet = np.zeros((sheet_h, sheet_w), np.float32)
        boxes = []
        for ink, top, left in zip(pieces, tops, lefts, strict=False):
            r, c = round(top), round(left + margin)
            region = sheet[r : r + ink.shape[0], c : c + ink.shape[1]]
            np.maximum(region, ink[: region.shape[0], : region.shape[1]], out=region)
            boxes.append((c, r, ink.shape[1], ink.shape[0]))
        text = "".join(str(int(labels[i])) for i in picks)
        if photo:
            frame = _frame(rng)
            fit = min(0.9 * frame[0] / sheet_w, 0.6 * frame[1] / sheet_h)
            ink = _scaled(sheet, fit)
            alpha, where = _placed(ink, frame, rng)
            left, top = _origin(ink, where)
            boxes = [_fit_box(b, fit, left, top) for b in boxes]
            yield Sample(_photo(alpha, rng), text, tuple(boxes), "number photo")
        else:
            ink = _stroked(sheet)
            frame = (ink.shape[1] + int(rng.integers(10, 80)), ink.shape[0] + int(rng.integers(10, 80)))
            alpha, where = _placed(ink, frame, rng)
            left, top = _origin(ink, where)
            boxes = [_fit_box(b, 1.0, left, top) for b in boxes]
            yield Sample(_canvas(alpha, rng), text, tuple(boxes), "number canvas")


def _origin(ink: np.ndarray, box: Box) -> tuple[int, int]:
    """Where `_placed` put the top-left corner of `ink`, from the box of its ink."""
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    cols = np.flatnonzero(ink.max(axis=0) > 0.1)
    return box[0] - int(cols[0]), box[1] - int(rows[0])


def _fit_box(box: Box, scale: float, left: int, top: int) -> Box:
    x, y, w, h = box
    return (left + round(x * scale), top + round(y * scale), max(1, round(w * scale)), max(1, round(h * scale)))


def _broken(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit with a band across it erased (a stroke lifted): two pieces, or more."""
    rows = np.flatnonzero(digit.max(axis=1) > 40)
    cut = int(rng.integers(rows[0] + (len(rows) * 3) // 10, rows[0] + max((len(rows) * 6) // 10, 4)))
    out = digit.copy()
    out[cut : cut + 2] = 0
    return out


# --- drawing the ink -------------------------------------------------------------------------


def _crop(digit: np.ndarray) -> np.ndarray:
    """float32 [h,w] alpha 0..1 of the digit's ink, cropped to it."""
    alpha = digit.astype(np.float32) / 255.0
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    return alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _scaled(alpha: np.ndarray, factor: float) -> np.ndarray:
    height, width = alpha.shape
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    resample = Image.Resampling.BICUBIC if factor >= 1 else Image.Resampling.BOX
    return np.clip(np.asarray(Image.fromarray(alpha).resize(size, resample)), 0.0, 1.0)


def _rotated(alpha: np.ndarray, rng: np.random.Generator, degrees: float = 8.0) -> np.ndarray:
    big = _scaled(alpha, 4.0)  # rotate at a larger size, so the edges stay smooth
    turned = Image.fromarray(big).rotate(rng.uniform(-degrees, degrees), Image.Resampling.BICUBIC, expand=True)
    out = np.clip(np.asarray(turned), 0.0, 1.0)
    rows = np.flatnonzero(out.max(axis=1) > 0.02)
    cols = np.flatnonzero(out.max(axis=0) > 0.02)
    return _scaled(out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 0.25)


def _stroked(alpha: np.ndarray) -> np.ndarray:
    """Soft MNIST ink -> the hard-edged strokes of a canvas pen (antialiased by one pixel)."""
    return np.clip((alpha - 0.35) * 4.0, 0.0, 1.0)


def _placed(ink: np.ndarray, frame: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, Box]:
    """The ink anywhere inside a frame (width, height) -> (alpha [H,W], the ink's box). The
    box's corner less the ink's own margin is where `ink` was put (see `numbers`)."""
    width, height = frame
    ink = ink[:height, :width]
    top = int(rng.integers(0, height - ink.shape[0] + 1))
    left = int(rng.integers(0, width - ink.shape[1] + 1))
    alpha = np.zeros((height, width), np.float32)
    alpha[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    rows = np.flatnonzero(ink.max(axis=1) > 0.1)
    cols = np.flatnonzero(ink.max(axis=0) > 0.1)
    box = (left + int(cols[0]), top + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    return alpha, box


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    """A photo's (width, height): 320x240 to 800x600, landscape or portrait."""
    long_side = int(rng.integers(320, 801))
    short_side = long_side * 3 // 4
    return (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)


# --- rendering -------------------------------------------------------------------------------

_PENS = {
    "black": ((15, 15, 20), (50, 50, 55)),
    "grey": ((70, 70, 70), (105, 105, 105)),
    "blue": ((15, 30, 110), (45, 70, 175)),
}


def _photo(alpha: np.ndarray, rng: np.random.Generator) -> bytes:
    """Alpha [H,W] of the pen -> a phone photo's JPEG bytes (see the module docstring)."""
    height, width = alpha.shape
    paper = rng.uniform(150, 235) * (1.0 + rng.uniform(-0.04, 0.04, 3))  # slightly tinted
    low, high = _PENS[str(rng.choice(list(_PENS)))]
    pen = rng.uniform(low, high)
    a = alpha[..., None]
    rgb = paper * (1.0 - a) + pen * a  # [H,W,3]
    rgb *= _lighting(height, width, rng)[..., None]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    noisy = np.asarray(image, np.float32) + rng.normal(0.0, rng.uniform(2.0, 8.0), (height, width, 1))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=int(rng.integers(60, 93)))
    return out.getvalue()


def _lighting(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H,W] light across the page: gradient x vignette x (sometimes) a shadow."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xs / (width - 1) - 0.5, ys / (height - 1) - 0.5  # -0.5..0.5
    angle = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0, 0.25) * 2.0 * (u * math.cos(angle) + v * math.sin(angle))
    light *= 1.0 - rng.uniform(0, 0.3) * (u * u + v * v) / 0.5  # corners darkest
    if rng.random() < 1 / 3:  # a soft shadow edge across the page
        angle = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(-0.3, 0.3)
        softness = rng.uniform(0.02, 0.08)
        distance = u * math.cos(angle) + v * math.sin(angle) - offset
        light *= 1.0 - rng.uniform(0.15, 0.35) / (1.0 + np.exp(-distance / softness))
    return light


def _canvas(alpha: np.ndarray, rng: np.random.Generator) -> bytes:
    """Alpha [H,W] of the strokes -> the PNG a drawing pad exports: white on black (the page),
    or dark strokes on a transparent canvas."""
    if rng.random() < 0.5:
        return _png((alpha * 255).astype(np.uint8))
    height, width = alpha.shape
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 60)
    rgba[..., 3] = (alpha * 255).astype(np.uint8)
    rgba[alpha == 0] = 0
    return _png(rgba)


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()
