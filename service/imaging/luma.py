"""The luminance handed from decoding to ink finding: the whole image, or the part of it that is not
one flat tone.

A drawing pad's export is mostly untouched pad: a 280x280 canvas holds a digit of perhaps 150x120
pixels, and every other pixel is the same transparent colour. Decoding finds that rectangle while it
flattens the transparency, so the ink finding looks at the rectangle only, and the pad around it is
never written out as a float image of its own. Every other upload is its whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Luma"]


@dataclass(frozen=True, slots=True)
class Luma:
    """An image's luminance, float32 on 0..255.

    `rectangle` holds the pixels of the rectangle at `origin` (top, left) of an image of `shape`
    (height, width); every pixel outside it is `margin`. For most uploads the rectangle is the whole
    image (`whole`). `scale` is the factor the image was shrunk by: pixel (r, c) covers pixel
    (r*scale, c*scale) of the uploaded image.
    """

    rectangle: np.ndarray
    scale: float = 1.0
    origin: tuple[int, int] = (0, 0)
    shape: tuple[int, int] | None = None  # None: the rectangle's own (the whole image)
    margin: float = 0.0

    @property
    def whole(self) -> bool:
        """Whether `rectangle` is the whole image."""
        return self.shape is None or self.shape == self.rectangle.shape

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width) of the whole image."""
        height, width = self.shape if self.shape is not None else self.rectangle.shape
        return height, width

    @property
    def values(self) -> np.ndarray:
        """float32 [H,W]: the whole image (written out from the rectangle and the margin if need be)."""
        if self.whole:
            return self.rectangle
        image = np.full(self.image_shape, self.margin, dtype=np.float32)
        top, left = self.origin
        height, width = self.rectangle.shape
        image[top : top + height, left : left + width] = self.rectangle
        return image
