"""Any image -> the model's input, and a handwritten number -> its digits. No HTTP here.

    bytes --decode.decode_luma--> luma.Luma: luminance [H,W] (formats, EXIF, size limits,
                                  transparency; a drawing pad's: the rectangle around its strokes)
          --ink.find_ink--> the ink's pieces (light flattened, polarity, threshold, components)
          --mnist.to_mnist--> [28,28] MNIST-style digit              (preprocess_image_bytes)
          --segment.split_digits--> one [28,28] and one box per digit     (read_number_bytes)
    JSON pixels --mnist.pixels_to_batch--> [N,1,28,28] (already MNIST-style, only validated)

The service's upload, base64 and canvas paths and the batch scorer all call this package, so
a digit gets the same pixels whichever way it arrives. Errors are `errors.ImagingError`s.
"""

from __future__ import annotations

import numpy as np

from service.imaging.decode import DEFAULT_MAX_PIXELS, SUPPORTED_FORMATS, decode_image, decode_luma
from service.imaging.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    ImagingError,
    NoInkError,
    PixelArrayError,
)
from service.imaging.ink import find_ink
from service.imaging.mnist import pixels_to_batch, refuse_blank, to_mnist
from service.imaging.png import png_pixels
from service.imaging.segment import DigitImage, split_digits

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "DigitImage",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ImagingError",
    "NoInkError",
    "PixelArrayError",
    "decode_image",
    "pixels_to_batch",
    "png_pixels",
    "preprocess_image_bytes",
    "read_number_bytes",
    "refuse_blank",
    "to_mnist",
]


def preprocess_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Uploaded image bytes -> float32 [28,28] MNIST-style digit: all of the image's ink."""
    ink = find_ink(decode_luma(data, max_pixels=max_pixels))
    left, top = ink.boxes[:, :2].min(axis=0)
    right, bottom = (ink.boxes[:, :2] + ink.boxes[:, 2:]).max(axis=0)
    return to_mnist(ink.strength[top:bottom, left:right])  # the rectangle around all of the ink


def read_number_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[DigitImage]:
    """Uploaded image bytes -> its digits, left to right: each one's [28,28] and its box in the
    uploaded image's pixels."""
    luma = decode_luma(data, max_pixels=max_pixels)
    return split_digits(find_ink(luma), scale=luma.scale)
