"""The imaging package's own errors. They say what was wrong and what to do; they know no HTTP
status (the service maps them at its edge, the batch scorer reports them per file)."""

from __future__ import annotations

__all__ = ["ImageDecodeError", "ImageTooLargeError", "ImagingError", "NoInkError", "PixelArrayError"]


class ImagingError(ValueError):
    """An input that cannot be turned into digits. The message says what to do about it."""


class ImageDecodeError(ImagingError):
    """Bytes that are not an image in a supported format, or a corrupt/truncated one."""


class ImageTooLargeError(ImagingError):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""


class NoInkError(ImagingError):
    """An input without ink: empty paper, a transparent canvas, an all-zero pixel array."""


class PixelArrayError(ImagingError):
    """A JSON pixel array of the wrong shape, type or range."""


def no_ink(where: str = "the image") -> NoInkError:
    return NoInkError(
        f"{where} contains no ink (it is blank): draw a digit, or send a picture of a dark "
        "digit on a light background or a light digit on a dark one"
    )
