"""Ink -> the model's input: an MNIST-style 28x28 digit, white ink on black, raw 0..255.

The MNIST recipe (LeCun et al.): crop to the ink's bounding box, scale it to fit 20x20
keeping the aspect ratio (anti-aliased, so grey levels remain), place it in a 28x28 field
so that its centre of mass sits at the centre. Real MNIST digits have their centre of mass
within half a pixel of (14, 14) (row, column), which is what `to_mnist` reproduces.
Normalisation (mean/std) lives in the exported model, never here.

JSON pixel arrays are already MNIST-style: `pixels_to_batch` only validates them.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.contract import IMAGE_SIDE
from service.imaging.errors import PixelArrayError, no_ink

__all__ = ["MNIST_SIDE", "pixels_to_batch", "refuse_blank", "to_mnist"]

MNIST_SIDE = IMAGE_SIDE  # side of the model's input (core/contract.py)
_MNIST_SIDE = MNIST_SIDE
_BOX_SIZE = 20  # the digit is scaled to fit this box inside the 28x28 field
_CENTRE = 14.0  # target centre of mass (row and column), as measured on MNIST itself
# to_mnist: the bounding box holds the pixels above this fraction of the ink's maximum.
_BBOX_FRACTION = 0.02


# --- [H,W] ink -> [28,28] MNIST-style ----------------------------------------------------


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """[H,W] ink-high grayscale (background 0) -> float32 [28,28] on 0..255, the MNIST recipe.

    Crop to the ink's bounding box, scale to fit 20x20 keeping the aspect ratio, re-stretch
    so the ink's maximum is 255 (area-averaging fades thin strokes of large images), place in
    28x28 and shift by whole pixels so the centre of mass is at (14, 14), keeping the digit
    inside the field. Raises NoInkError when there is no ink.
    """
    ink = np.asarray(gray, dtype=np.float32)
    if ink.ndim != 2:
        raise ValueError(f"to_mnist expects a 2-D [H,W] array, got shape {ink.shape}")
    peak = float(ink.max(initial=0.0))
    if not peak > 0.0:  # also catches NaN
        raise no_ink()

    left, top, width, height = cv2.boundingRect((ink > peak * _BBOX_FRACTION).view(np.uint8))
    box = np.maximum(ink[top : top + height, left : left + width], 0.0)  # [h,w], clipped at 0
    scale = _BOX_SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (w, h)
    if new_size != (width, height):
        # Pillow's LANCZOS widens its kernel with the reduction factor, so shrinking averages
        # the whole area (a 1-px line keeps its mass, re-stretched below) while keeping edges
        # sharper than BOX; on growing it interpolates smoothly. "F" mode keeps grey levels.
        # (frombuffer: Image.fromarray's array-interface parsing costs more than the copy.)
        resized = Image.frombuffer("F", (width, height), box, "raw", "F", 0, 1).resize(
            new_size, Image.Resampling.LANCZOS
        )
        box = np.maximum(np.asarray(resized), 0.0)  # LANCZOS overshoots below 0 next to strokes
    box = box * np.float32(255.0 / float(box.max()))  # [h',w'], ink max 255 as in MNIST

    height, width = box.shape
    # Centre of mass: the grey levels' weighted mean row and column. (cv2.moments would take an
    # [n,2] box for a contour's points: a digit one or two pixels wide, a "1", is one.)
    rows, cols = box.sum(axis=1), box.sum(axis=0)  # (np.average's arithmetic, without its checks)
    com_row = float(np.multiply(np.arange(height), rows, dtype=np.float64).sum() / rows.sum(dtype=np.float64))
    com_col = float(np.multiply(np.arange(width), cols, dtype=np.float64).sum() / cols.sum(dtype=np.float64))
    top = _place(com_row, height)
    left = _place(com_col, width)
    digit = np.zeros((_MNIST_SIDE, _MNIST_SIDE), dtype=np.float32)
    digit[top : top + height, left : left + width] = box
    return np.clip(digit, 0.0, 255.0)


def _place(com: float, extent: int) -> int:
    """Offset putting a box's centre of mass `com` (box coordinates) nearest to _CENTRE."""
    offset = math.floor(_CENTRE - com + 0.5)  # round half up, as a whole-pixel shift
    return min(max(offset, 0), _MNIST_SIDE - extent)


# --- JSON pixel arrays -> [N,1,28,28] ----------------------------------------------------

_SHAPE_HINT = "expected a 28x28 array or a list of 28x28 arrays"


def pixels_to_batch(pixels: object, *, blank_ok: bool = False) -> np.ndarray:
    """JSON pixels (one 28x28 nested list, or a list of them) -> float32 [N,1,28,28].

    The values are taken as they are (MNIST-style: 0..255, white ink on black); only the
    shape and the range are checked. Anything NumPy reads as a number is one (as JSON
    decoding and pydantic's lax mode would have it); null reads as NaN and is refused.
    An all-zero image has no ink and is refused as a blank upload is (NoInkError), unless
    `blank_ok` (the caller checks other limits first, then calls `refuse_blank`).
    """
    batch = _checked_pixels(pixels)
    if not blank_ok:
        refuse_blank(batch)
    return batch


def refuse_blank(batch: np.ndarray) -> None:
    """Raise NoInkError naming the first all-zero image of float32 [N,1,28,28] `batch`, if any."""
    (blank,) = (batch.reshape(len(batch), -1).max(axis=1) <= 0.0).nonzero()
    if blank.size:
        raise no_ink(f"image {int(blank[0])} (all zero)" if len(batch) > 1 else "the pixel array (all zero)")


def _checked_pixels(pixels: object) -> np.ndarray:
    exact = _whole_bytes(pixels)
    if exact is not None:
        return exact
    try:
        # Any other numbers (floats, or an array NumPy reads otherwise): one C-level conversion,
        # then vectorised checks. Overflow becomes inf and is refused below.
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(pixels, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as exc:
        if "inhomogeneous" in str(exc) or "sequence" in str(exc):
            message = f"{_SHAPE_HINT}, got a ragged nested list (rows or images of different lengths)"
        else:
            message = f"values must be numbers between 0 and 255; {exc}"
        raise PixelArrayError(message) from exc

    if array.shape == (_MNIST_SIDE, _MNIST_SIDE):
        images = array[None]  # [1,28,28]
    elif array.ndim == 3 and array.shape[1:] == (_MNIST_SIDE, _MNIST_SIDE) and array.shape[0] > 0:
        images = array  # [N,28,28]
    else:
        raise PixelArrayError(f"{_SHAPE_HINT}, got shape {array.shape}")

    # Two reductions; NaN fails both comparisons and lands in the slow path.
    if not (images.min() >= 0.0 and images.max() <= 255.0):
        _raise_bad_value(images, pixels, single=array.ndim == 2)
    return np.ascontiguousarray(images[:, None])  # [N,1,28,28]; no copy for a list


_LIST_TYPE, _SIDE_LENGTH = {list}, {_MNIST_SIDE}


def _whole_bytes(pixels: object) -> np.ndarray | None:
    """The common case, fast: 28x28 lists of integers 0..255 (one image, or a list of images) ->
    float32 [N,1,28,28]; None for anything else, which the general path converts or refuses.

    ``bytearray`` converts the integers in C and refuses (TypeError/ValueError) any value that is
    not an integer in 0..255, so it checks the range too; the shape is checked first, since it
    flattens whatever it is given. About 4x faster than ``np.asarray`` plus the range checks.
    """
    if type(pixels) is not list or not pixels:
        return None
    first = pixels[0]
    images = pixels if type(first) is list and first and type(first[0]) is list else (pixels,)
    rows: list[Any] = []  # 28-value rows of numbers, checked below
    for image in images:  # 28 lists of 28 (set(map(...)) keeps the checks in C)
        if type(image) is not list or len(image) != _MNIST_SIDE or set(map(type, image)) != _LIST_TYPE \
                or set(map(len, image)) != _SIDE_LENGTH:
            return None
        rows += image
    try:
        flat = bytearray(itertools.chain.from_iterable(rows))
    except (TypeError, ValueError):
        return None
    return np.frombuffer(flat, np.uint8).reshape(len(images), 1, _MNIST_SIDE, _MNIST_SIDE).astype(np.float32)


def _raise_bad_value(images: np.ndarray, pixels: object, *, single: bool) -> None:
    """Name the first offending value of [N,28,28] `images` (at least one is bad)."""
    finite = np.isfinite(images)
    if not finite.all():
        image, row, column = (int(i) for i in np.argwhere(~finite)[0])
        sent = _sent_value(pixels, (row, column) if single else (image, row, column))
        raise PixelArrayError(
            f"values must be finite numbers between 0 and 255; found {sent} "
            f"at image {image}, row {row}, column {column}"
        )
    image, row, column = (int(i) for i in np.argwhere((images < 0.0) | (images > 255.0))[0])
    raise PixelArrayError(
        f"values must be between 0 and 255; found {images[image, row, column]!s} "
        f"at image {image}, row {row}, column {column}"
    )


def _sent_value(pixels: object, position: tuple[int, ...]) -> str:
    """The value as the client sent it (null, nan, a huge number), for the error message."""
    value = pixels
    try:
        for index in position:
            value = value[index]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return "a non-finite value"
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)
