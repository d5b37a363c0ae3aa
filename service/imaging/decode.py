"""Any image -> the model's input: an MNIST-style 28x28 digit, white ink on black, raw 0..255.

The one preprocessing implementation: the service's upload, base64 and canvas paths and
the batch scorer all call it, so a digit gets the same pixels whichever way it arrives.
numpy + Pillow only. Normalisation (mean/std) lives in the exported model, never here.

    bytes --decode_image--> PIL image --to_grayscale--> [H,W] ink-high 0..255
          --to_mnist--> [28,28] 0..255
    (preprocess_image_bytes does all three, shrinking very large images on the way)
    JSON pixels --pixels_to_batch--> [N,1,28,28] (already MNIST-style, only validated)

The MNIST recipe (LeCun et al.): crop to the ink's bounding box, scale it to fit 20x20
keeping the aspect ratio (anti-aliased, so grey levels remain), place it in a 28x28 field
so that its centre of mass sits at the centre. Real MNIST digits have their centre of mass
within half a pixel of (14, 14) (row, column), which is what `to_mnist` reproduces.

Speed: every upload pays for this, so the work follows the ink, not the image. The paper's
tone and noise come from the border ring (a histogram, not a sort of the image); the
per-pixel steps run on the rectangle that can hold ink; the untouched transparent pixels of
a canvas export are never converted; EXIF is parsed only when the file carries some. The
pixels are exactly those of the plain whole-image computation (tests/test_preprocess.py
holds one and compares), so the shortcuts change speed, never answers.
"""

from __future__ import annotations

import io
import itertools
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "EmptyImageError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "PixelArrayError",
    "PreprocessError",
    "decode_image",
    "pixels_to_batch",
    "preprocess_image_bytes",
    "to_grayscale",
    "to_mnist",
]

SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "BMP", "WEBP", "GIF"})
DEFAULT_MAX_PIXELS: int = 40_000_000

_MNIST_SIDE = 28  # side of the model's input
_BOX_SIZE = 20  # the digit is scaled to fit this box inside the 28x28 field
_CENTRE = 14.0  # target centre of mass (row and column), as measured on MNIST itself

# to_grayscale: background from a border ring of this fraction of the shorter side (>= 1 px).
_BORDER_FRACTION = 1 / 32
# Below this contrast (on 0..255) against the background nothing counts as ink: JPEG noise
# and paper texture stay under it, a faint pencil stroke does not.
_MIN_CONTRAST = 16.0
# Ink weaker than this fraction of the strongest ink is background noise (JPEG ringing),
# and so is ink within this many standard deviations of the paper's own noise (photos).
_NOISE_FRACTION = 0.1
_NOISE_SIGMAS = 5.0
# Alpha images: when at least this fraction of the area is opaque, the opaque part is the
# picture (a screenshot with transparent corners); below it, it is strokes on a transparent
# canvas and the alpha channel is the ink.
_OPAQUE_PICTURE_COVERAGE = 0.5
# Transparent pixels whose colour differs this much from the strokes are the paper.
_STROKE_CONTRAST = 64.0
# preprocess_image_bytes shrinks images whose longer side exceeds this before processing.
_WORKING_SIDE = 2048
# to_mnist: the bounding box holds the pixels above this fraction of the ink's maximum.
_BBOX_FRACTION = 0.02

# Image.open tries only these; a Pillow built without WebP would raise KeyError for it.
_OPEN_FORMATS = tuple(f for f in sorted(SUPPORTED_FORMATS) if f != "WEBP" or features.check_module("webp"))
_SEND_HINT = "send a PNG, JPEG, BMP, WebP or GIF"
# Pillow names the JPEG variant with an MPF block (many phone cameras) "MPO".
_FORMAT_ALIASES = {"MPO": "JPEG"}
# What Pillow raises on malformed input while identifying or decoding it.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, EOFError, struct.error, zlib.error)

# Pillow's own decompression-bomb check warns between Image.MAX_IMAGE_PIXELS and twice that,
# before decode_image sees the size. decode_image applies its own limit from the header, so
# the warning is noise; it is silenced here once, for that category only, because changing
# warning filters per call (warnings.catch_warnings) is not thread-safe and the service
# decodes in a thread pool. Pillow's error (above twice the limit) is caught and reported
# as ImageTooLargeError, as is the warning where warnings are turned into errors.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class PreprocessError(ValueError):
    """An input the service cannot turn into a digit. The message says what to do about it."""

    status_code: int = 422


class ImageDecodeError(PreprocessError):
    """Bytes that are not an image in a supported format, or a corrupt/truncated one."""


class ImageTooLargeError(PreprocessError):
    """An image whose header declares more pixels than allowed (a decompression bomb)."""

    status_code: int = 413


class EmptyImageError(PreprocessError):
    """An image without ink: blank, or a single flat tone."""


class PixelArrayError(PreprocessError):
    """A JSON pixel array of the wrong shape, type or range."""


# --- bytes -> PIL image ------------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image: a supported format, at most `max_pixels` pixels.

    The size is checked from the header, before any pixel is decoded. Animated images give
    their first frame. EXIF orientation (photos from phones) is applied.
    """
    return _load(_open(data, max_pixels), max_pixels)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify `data` and check its format and declared size; no pixel is decoded yet."""
    if not data:
        raise ImageDecodeError(f"could not decode image: the upload is empty; {_SEND_HINT}")
    try:
        # Restricting the formats keeps exotic header parsers away from untrusted bytes.
        image = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_too_large(exc, max_pixels) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"could not decode image: {_describe_unidentified(data)}; {_SEND_HINT}"
        ) from exc
    except _DECODE_ERRORS as exc:  # a recognised format whose header is broken
        raise ImageDecodeError(
            f"could not decode image: {_describe_unidentified(data)} ({exc}); {_SEND_HINT}"
        ) from exc

    found = _FORMAT_ALIASES.get(image.format or "", image.format)
    if found not in SUPPORTED_FORMATS:  # defensive: Image.open was told which formats to try
        raise ImageDecodeError(f"could not decode image: {found} images are not supported; {_SEND_HINT}")
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"could not decode image: it has zero size ({width}x{height}); {_SEND_HINT}")
    if width * height > max_pixels:
        raise _too_large(f"{width}x{height} = {width * height:,} pixels", max_pixels)
    return image


def _load(image: Image.Image, max_pixels: int) -> Image.Image:
    """Decode the pixels of an image from `_open` (the first frame only: nothing seeks)."""
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_too_large(exc, max_pixels) from exc
    except _DECODE_ERRORS as exc:
        found = _FORMAT_ALIASES.get(image.format or "", image.format)
        raise ImageDecodeError(
            f"could not decode image: the {found} data is corrupt or truncated ({exc}); {_SEND_HINT}"
        ) from exc
    return _apply_exif_orientation(image)


def _too_large(declared: str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image too large: its header declares {declared}, above the limit of {limit:,} pixels; "
        "send a smaller image (a digit needs no more than a few hundred pixels a side)"
    )


def _pillow_too_large(exc: Exception, max_pixels: int) -> ImageTooLargeError:
    """Pillow's own bomb check fired first; its message carries the count and its limit."""
    counts = [int(n) for n in re.findall(r"\d+", str(exc))]  # "Image size (N pixels) exceeds limit of L"
    if len(counts) >= 2:
        return _too_large(f"{counts[0]:,} pixels", min(counts[1], max_pixels))
    return _too_large("too many pixels", max_pixels)


# Magic numbers of formats people send by mistake, to name them in the error message.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"%PDF-", "PDF"),
    (b"%!PS", "PostScript"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"qoif", "QOI"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF"}


def _describe_unidentified(data: bytes) -> str:
    """Why Pillow could not identify `data`, naming the format when it is recognisable."""
    found = None
    for magic, name in _MAGIC:
        if data.startswith(magic):
            found = name
            break
    if found is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = "WEBP"
    if found is None and data[:2] == b"BM":
        found = "BMP"
    if found is None and data[4:8] == b"ftyp":
        found = _FTYP_BRANDS.get(data[8:12], "ISO media (HEIC/AVIF/MP4)")
    if found is None:
        head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
        if b"<svg" in head:
            found = "SVG"
        elif head.startswith(b"<"):
            found = "an XML/HTML document"
    if found in SUPPORTED_FORMATS:
        return f"the data looks like a {found} file but is corrupt or truncated"
    if found is not None:
        return f"{found} images are not supported"
    return "the data is not an image in a supported format"


# Where Pillow's Image.getexif finds an orientation: an image with none of these (a canvas
# export, a scan) needs no EXIF parsing.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate phone photos upright. A malformed EXIF block is ignored, not an error."""
    if not any(key in image.info for key in _ORIENTATION_KEYS):
        return image
    try:
        return ImageOps.exif_transpose(image, in_place=True) or image
    except _DECODE_ERRORS:
        return image


# --- PIL image -> [H,W] ink-high grayscale -----------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 [H,W], ink high (255 at its strongest), background 0.

    Dark ink on light paper and light ink on dark paper both come out as white ink on black:
    the paper is the median tone of a border ring, the ink whichever side of it deviates
    more. JPEG noise, paper grain (from the border's spread) and isolated specks become 0.
    Images with transparency are flattened first (see `_composite_alpha`). An image without
    ink comes out all zero.
    """
    luma = _luma_of(image)
    gray = np.zeros((luma.height, luma.width), dtype=np.float32)
    found = _find_ink(luma)
    if found is not None:
        ink, top, left = found
        gray[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    return gray


@dataclass(frozen=True, slots=True)
class _Luma:
    """A [height,width] luminance image (0..255) held as the rectangle that can hold ink.

    `inner` sits at rows top.., columns left.. and every pixel outside it is `fill`. Most
    images are held whole, as uint8 (their luminance is whole numbers) or float32. A canvas
    export is mostly untouched, fully transparent black pixels: only the rectangle around
    the strokes is converted, and the statistics count the rest without visiting it.
    """

    inner: np.ndarray  # [h,w] uint8 or float32
    top: int
    left: int
    height: int
    width: int
    fill: float  # the value outside `inner` (unused when it covers the image)

    @property
    def whole(self) -> bool:
        return self.inner.shape == (self.height, self.width)


def _whole(luma: np.ndarray) -> _Luma:
    height, width = luma.shape
    return _Luma(luma, 0, 0, height, width, 0.0)


def _blank(height: int, width: int) -> _Luma:
    return _Luma(np.zeros((1, 1), dtype=np.float32), 0, 0, height, width, 0.0)


def _expand(luma: _Luma) -> np.ndarray:
    """The float32 [H,W] luminance a _Luma stands for."""
    if luma.whole:
        return luma.inner.astype(np.float32)
    full = np.full((luma.height, luma.width), luma.fill, dtype=np.float32)
    full[luma.top : luma.top + luma.inner.shape[0], luma.left : luma.left + luma.inner.shape[1]] = luma.inner
    return full


def _luma_of(image: Image.Image) -> _Luma:
    """Any Pillow image -> its luminance 0..255 (transparency flattened)."""
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        return _whole(_wide_to_luma(image))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_alpha(image)
    if image.mode == "LAB":
        return _whole(np.asarray(image.getchannel("L")))  # L* is the lightness
    if image.mode == "L":
        return _whole(np.asarray(image))
    return _whole(np.asarray(_convert(image, "L")))  # uint8: Pillow converts in C


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:
        pass
    try:  # modes without a direct path (La, ...) go through RGBA
        return image.convert("RGBA").convert(mode)
    except ValueError as exc:
        raise ImageDecodeError(
            f"could not decode image: unsupported colour mode {image.mode}; {_SEND_HINT}"
        ) from exc


def _wide_to_luma(image: Image.Image) -> np.ndarray:
    """16/32-bit integer and float images -> 0..255 by the mode's range."""
    values = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # in place
        peak = float(values.max(initial=0.0))
        scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / peak)  # 0..1 or 0..255
        return np.clip(values, 0.0, None) * np.float32(scale)
    if image.mode == "I" and float(values.max(initial=0.0)) <= 255.0:
        return np.clip(values, 0.0, 255.0)  # 8-bit data held in 32-bit integers
    return np.clip(values, 0.0, 65535.0) * np.float32(255.0 / 65535.0)


def _composite_alpha(image: Image.Image) -> _Luma:
    """Flatten an image with transparency onto a background, as luminance 0..255.

    Where most of the area is transparent, the opaque pixels are the strokes and the alpha
    is the ink (ink = alpha * contrast of the stroke colour against the background). The
    background is the colour under the transparent pixels when it contrasts with the
    strokes (a colour-key GIF or PNG whose transparent colour is the paper); otherwise, as
    in a browser canvas export whose untouched pixels are (0,0,0,0) whatever the stroke
    colour, it is the tone opposite to the strokes: black strokes go onto white, white
    onto black. Where most of the area is opaque (a screenshot with transparent corners),
    the opaque part is the picture and goes onto its own paper tone.

    Only the bounding box of the pixels that are not (0,0,0,0) is converted: outside it
    the luminance and the alpha are 0, which the statistics below count without looking,
    and the flattened value is the background.
    """
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    width, height = image.size
    box = image.getbbox(alpha_only=False)  # in C; None: every pixel is (0,0,0,0)
    if box is None:
        return _blank(height, width)
    left, top, right, bottom = box
    if (right - left, bottom - top) != (width, height):
        image = image.crop(box)
    luma = np.asarray(image.convert("L"))  # [h,w] uint8, ignores alpha
    alpha = np.asarray(image.getchannel("A"))  # [h,w] uint8
    area = width * height
    outside = area - alpha.size  # transparent black pixels around the box
    if not outside and alpha.min() == 255:
        return _whole(luma)  # every pixel opaque (coverage 1)
    visible = np.count_nonzero(alpha)
    if not visible:
        return _blank(height, width)  # fully transparent (coverage 0): no ink
    # coverage is alpha.mean() / 255 over the whole image; below half the area visible it is
    # below one half whatever the alpha values, so they need no summing.
    opaque = alpha >= 128
    if 2 * visible >= area and int(alpha.sum()) / area / 255.0 >= _OPAQUE_PICTURE_COVERAGE:
        background = _median_of_counts(np.bincount(luma[opaque], minlength=256))  # the picture's paper
    else:
        strokes = luma[opaque] if opaque.any() else luma[alpha > 0]
        under = _hidden_median(luma, alpha, alpha.size - visible, outside)
        if under is not None and _contrast_reaches(strokes, under, _STROKE_CONTRAST):
            background = under
        else:  # int sum / count: exactly strokes.mean()
            background = 255.0 if int(strokes.sum()) / strokes.size < 127.5 else 0.0
    # background + alpha/255 * (luma - background), operation by operation as float32
    flat = np.subtract(luma, np.float32(background), dtype=np.float32)
    weight = alpha.astype(np.float32)
    weight *= np.float32(1 / 255)
    flat *= weight
    flat += np.float32(background)
    return _Luma(flat, top, left, height, width, background)  # weight 0 outside: the background


def _median_of_counts(counts: np.ndarray) -> float:
    """Median of uint8 values from their histogram (the lower of the two middle values when
    the count is even): linear time, no sort of a full image."""
    cumulative = np.cumsum(counts)
    return float(np.searchsorted(cumulative, (cumulative[-1] + 1) // 2))


def _hidden_median(luma: np.ndarray, alpha: np.ndarray, inside: int, outside: int) -> float | None:
    """Median luminance of the fully transparent pixels (None if there are none): `inside`
    the box, and `outside` it transparent black. When those are the majority it is 0 at once."""
    hidden = inside + outside
    if not hidden:
        return None
    if outside >= (hidden + 1) // 2:  # the lower median is among the zeros
        return 0.0
    counts = np.bincount(luma[alpha == 0], minlength=256)
    counts[0] += outside
    return _median_of_counts(counts)


def _contrast_reaches(strokes: np.ndarray, under: float, limit: float) -> bool:
    """Whether np.percentile(|strokes - under|, 90) reaches `limit`: decided by the range of
    the deviations when it lies on one side of `limit`, else by the two order statistics the
    percentile interpolates between (from a histogram), else by np.percentile itself."""
    low, high = float(strokes.min()), float(strokes.max())
    farthest = max(high - under, under - low)
    nearest = max(low - under, under - high, 0.0)
    if farthest < limit or nearest >= limit:
        return nearest >= limit
    deviations = np.abs(_LEVELS - np.float32(under))  # per grey level, as float32 like the pixels
    order = np.argsort(deviations, kind="stable")
    cumulative = np.cumsum(np.bincount(strokes, minlength=256)[order])
    index = math.floor((strokes.size - 1) * 0.9)  # np.percentile's (n - 1) * q, rounded down
    below = deviations[order[np.searchsorted(cumulative, index, side="right")]]
    above = deviations[order[np.searchsorted(cumulative, min(index + 1, strokes.size - 1), side="right")]]
    if below >= limit or above < limit:
        return bool(below >= limit)
    return bool(np.percentile(np.abs(strokes - np.float32(under)), 90) >= limit)


def _find_ink(luma: _Luma) -> tuple[np.ndarray, int, int] | None:
    """Luminance -> its ink: background 0, strongest ink 255, noise removed.

    Returns float32 [h,w] ink of the rectangle at (top, left) outside which the image has
    none, or None when it has none at all. The paper's tone and noise come from the border
    ring, the extremes from the whole image; everything per pixel (polarity masses,
    thresholds, specks, scaling) is then done on the rectangle of the pixels far enough from
    the paper to matter, with the same float32 arithmetic as on the whole image.
    """
    background, noise = _paper(luma)
    paper = np.float32(background)
    inner = luma.inner
    high, low = inner.max(), inner.min()
    if not luma.whole:
        high, low = max(high, np.float32(luma.fill)), min(low, np.float32(luma.fill))
    if inner.dtype == np.uint8:  # whole numbers less a whole or half one: exact in float64 too
        lightest, darkest = float(high) - background, background - float(low)
    else:
        lightest, darkest = float(high - paper), -float(low - paper)  # float32, as the pixels

    # Polarity: ink lies on the side of the background with more strong deviation. Headroom
    # decides it for clean images (nothing is darker than a black background); on grey
    # paper the ink's mass outweighs paper texture and glare.
    floor = 0.25 * max(lightest, darkest)
    reach = _reach(lightest, darkest, floor, noise)
    if reach is None:
        return None  # nothing stands out from the paper on either side
    if not luma.whole and abs(float(np.float32(luma.fill) - paper)) >= reach * _REACH_MARGIN:
        luma = _whole(_expand(luma))  # the pixels outside may be ink: look at all of them
        inner = luma.inner
    # The rectangle that can hold ink: a box around a canvas's strokes already is one, and a
    # small image is taken whole; otherwise, the pixels at least about `reach` from the paper.
    if not luma.whole or inner.size <= _SMALL_IMAGE:
        top, bottom, left, right = 0, inner.shape[0], 0, inner.shape[1]
    else:
        if inner.dtype == np.uint8:  # whole grey levels: compare in uint8
            far = _far_u8(inner, background, reach)
        else:
            far = np.abs(inner - paper) >= np.float32(reach * _REACH_MARGIN)
        extent = _bounds(far)
        if extent is None:
            return None
        top, bottom, left, right = extent
    crop = inner[top:bottom, left:right]

    if darkest > lightest:  # dark ink unless light ink is strong and outweighs it
        dark_ink, weigh = True, lightest >= floor
    else:  # light ink unless dark ink is strong and outweighs it
        dark_ink, weigh = False, darkest >= floor
    if weigh:
        ink = np.subtract(crop, paper, dtype=np.float32)  # [h,w], lighter > 0
        dark_ink = _darker_mass(ink, floor) > _mass_beyond(ink, floor)
        if dark_ink:
            np.negative(ink, out=ink)
    else:  # paper - crop is exactly -(crop - paper)
        ink = np.subtract(paper, crop, dtype=np.float32) if dark_ink else np.subtract(crop, paper, dtype=np.float32)

    peak = max(darkest if dark_ink else lightest, 0.0)
    threshold = max(_NOISE_FRACTION * peak, _NOISE_SIGMAS * noise)
    if peak < _MIN_CONTRAST or peak < 2.0 * threshold:
        return None  # nothing stands out from the paper
    ink[ink < threshold] = 0.0  # threshold > 0: the other side goes too
    _drop_isolated_pixels(ink)
    ink *= np.float32(255.0 / peak)
    return ink, luma.top + top, luma.left + left


# Pixels outside the rectangle are at least this much closer than `reach` to the paper: a
# margin for float32 rounding of the thresholds, so the rectangle never misses a pixel.
_REACH_MARGIN = 1.0 - 1e-6
# Images of at most this many pixels are processed whole (an MNIST digit: 784).
_SMALL_IMAGE = 4096


def _paper(luma: _Luma) -> tuple[float, float]:
    """(tone, robust sigma) of the paper: median and 1.4826 * MAD of the border ring.

    The ring is the top, bottom, left and right strips, corners counted twice; its width
    is a fraction of the shorter side. Exactly np.median's values: uint8 luminance by
    histogram (or sorting, for a small ring), float32 by sorting or partition.
    """
    values, outside = _ring(luma, max(1, round(min(luma.height, luma.width) * _BORDER_FRACTION)))
    if values.dtype == np.uint8 and not outside and values.size > _SORT_LIMIT:
        counts = np.bincount(values, minlength=256)
        background = _order_median(_LEVELS, counts)
        deviations = np.abs(_LEVELS - np.float32(background))
        order = np.argsort(deviations, kind="stable")
        spread = _order_median(deviations[order], counts[order])
    else:
        values = values.astype(np.float32, copy=False)  # _ring's array is ours to reorder
        fill = np.float32(luma.fill)
        background = _median(values, fill, outside)
        paper = np.float32(background)
        spread = _median(np.abs(values - paper), np.abs(fill - paper), outside)
    return background, 1.4826 * spread


def _ring(luma: _Luma, ring: int) -> tuple[np.ndarray, int]:
    """The border ring's values held in `inner` (1-D), and how many lie outside it."""
    inner = luma.inner
    if luma.whole:
        strips = (inner[:ring], inner[-ring:], inner[:, :ring], inner[:, -ring:])
        return np.concatenate([strip.ravel() for strip in strips]), 0
    height, width = inner.shape
    if min(luma.top, luma.left, luma.height - luma.top - height, luma.width - luma.left - width) >= ring:
        return np.empty(0, dtype=inner.dtype), 2 * ring * (luma.height + luma.width)  # the box is clear of it
    parts: list[np.ndarray] = []
    outside = 0
    for r0, r1, c0, c1 in (
        (0, ring, 0, luma.width),
        (luma.height - ring, luma.height, 0, luma.width),
        (0, luma.height, 0, ring),
        (0, luma.height, luma.width - ring, luma.width),
    ):  # each strip in image coordinates, clipped to the box
        rows = slice(max(r0 - luma.top, 0), max(min(r1 - luma.top, height), 0))
        cols = slice(max(c0 - luma.left, 0), max(min(c1 - luma.left, width), 0))
        part = inner[rows, cols]
        parts.append(part.ravel())
        outside += (r1 - r0) * (c1 - c0) - part.size
    return np.concatenate(parts), outside


# Rings of more values than this are summarised by a histogram (uint8) or partitioned;
# smaller ones are sorted, which costs less than the calls around a histogram.
_SORT_LIMIT = 2048
_LEVELS = np.arange(256, dtype=np.float32)
_LEVELS.flags.writeable = False


def _order_median(levels: np.ndarray, counts: np.ndarray) -> float:
    """np.median of the multiset with counts[i] copies of float32 levels[i] (ascending)."""
    cumulative = np.cumsum(counts)
    size = int(cumulative[-1])
    half = size // 2
    upper = levels[np.searchsorted(cumulative, half, side="right")]
    if size % 2:
        return float(upper)
    lower = levels[np.searchsorted(cumulative, half - 1, side="right")]
    return float(lower + upper) / 2.0  # float32 sum, halved: what np.median's mean gives


def _median(values: np.ndarray, extra: np.float32, copies: int) -> float:
    """np.median of float32 `values` together with `copies` copies of `extra`: the same
    order statistics without np.median's overhead, and without materialising the copies.
    Reorders `values` in place."""
    size = values.size + copies
    half = size // 2
    wanted = (half,) if size % 2 else (half - 1, half)
    if copies and values.size > _SORT_LIMIT:  # rare: a big ring partly outside the box
        values, copies = np.concatenate([values, np.full(copies, extra, dtype=np.float32)]), 0
    if copies:
        values.sort()
        below = int(values.searchsorted(extra))  # the copies sit at below..below+copies
        picked = [extra if below <= i < below + copies else values[i if i < below else i - copies] for i in wanted]
    else:
        if values.size > _SORT_LIMIT:
            values.partition(wanted)
        else:
            values.sort()
        picked = [values[i] for i in wanted]
    if size % 2:
        return float(picked[0])
    return float(np.float32(picked[0]) + np.float32(picked[1])) / 2.0  # float32 sum, halved, as np.median


def _reach(lightest: float, darkest: float, floor: float, noise: float) -> float | None:
    """The smallest deviation from the paper that can matter: a strong pixel (beyond `floor`)
    weighs in the polarity, and ink survives the threshold of its side. None when neither
    side would stand out from the paper, whichever the polarity."""
    reach = floor
    viable = False
    for peak in (max(lightest, 0.0), max(darkest, 0.0)):
        threshold = max(_NOISE_FRACTION * peak, _NOISE_SIGMAS * noise)
        if not (peak < _MIN_CONTRAST or peak < 2.0 * threshold):
            reach = min(reach, threshold)
            viable = True
    return reach if viable else None


def _far_u8(inner: np.ndarray, background: float, reach: float) -> np.ndarray | None:
    """uint8 pixels at least about `reach` from the paper (a rounding margin wide), or None."""
    high = math.ceil(background + reach - 0.01)
    low = math.floor(background - reach + 0.01)
    lighter = inner >= high if high <= 255 else None
    darker = inner <= low if low >= 0 else None
    if lighter is None or darker is None:
        return darker if lighter is None else lighter
    return np.bitwise_or(lighter, darker, out=lighter)


def _bounds(mask: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the True pixels of a [h,w] mask, or None."""
    if mask is None:
        return None
    (rows,) = mask.any(axis=1).nonzero()
    if not rows.size:
        return None
    (cols,) = mask.any(axis=0).nonzero()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _mass_beyond(values: np.ndarray, floor: float) -> float:
    strong = values[values > floor]
    return float(strong.sum()) - floor * strong.size


def _darker_mass(values: np.ndarray, floor: float) -> float:
    """_mass_beyond(-values, floor) without negating the array: negation is exact, so the
    same pixels are picked and their (pairwise) sum is the same up to its sign."""
    strong = values[values < -floor]
    return -float(strong.sum()) - floor * strong.size


def _drop_isolated_pixels(ink: np.ndarray) -> None:
    """Zero ink pixels with no ink among their 8 neighbours: noise specks, never strokes."""
    height, width = ink.shape
    inked = np.zeros((height + 2, width + 2), dtype=np.uint8)  # a 1-px frame: every neighbour exists
    np.greater(ink, 0.0, out=inked[1:-1, 1:-1], casting="unsafe")  # 1 where ink
    rows = inked[:-2] + inked[1:-1]
    rows += inked[2:]  # [h,w+2]: ink in the pixel's column of 3
    block = rows[:, :-2] + rows[:, 1:-1]
    block += rows[:, 2:]  # [h,w]: ink in the 3x3 block
    isolated = block == 1  # the pixel alone, or one neighbour of an empty pixel
    isolated &= inked[1:-1, 1:-1].view(bool)
    ink[isolated] = 0.0


# --- [H,W] ink -> [28,28] MNIST-style ----------------------------------------------------


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """[H,W] ink-high grayscale (background 0) -> float32 [28,28] on 0..255, the MNIST recipe.

    Crop to the ink's bounding box, scale to fit 20x20 keeping the aspect ratio, re-stretch
    so the ink's maximum is 255 (area-averaging fades thin strokes of large images), place in
    28x28 and shift by whole pixels so the centre of mass is at (14, 14), keeping the digit
    inside the field. Raises EmptyImageError when there is no ink.
    """
    ink = np.asarray(gray, dtype=np.float32)
    if ink.ndim != 2:
        raise ValueError(f"to_mnist expects a 2-D [H,W] array, got shape {ink.shape}")
    peak = float(ink.max(initial=0.0))
    if not peak > 0.0:  # also catches NaN
        raise _no_ink()

    inked = ink > peak * _BBOX_FRACTION
    (rows,) = inked.any(axis=1).nonzero()
    (cols,) = inked.any(axis=0).nonzero()
    box = np.maximum(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 0.0)  # [h,w], clipped at 0
    height, width = box.shape
    scale = _BOX_SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (w, h)
    if new_size != (width, height):
        # Pillow's LANCZOS widens its kernel with the reduction factor, so shrinking averages
        # the whole area (a 1-px line keeps its mass, re-stretched below) while keeping edges
        # sharper than BOX; on growing it interpolates smoothly. "F" mode keeps grey levels.
        resized = Image.fromarray(box).resize(new_size, Image.Resampling.LANCZOS)
        box = np.maximum(np.asarray(resized), 0.0)  # LANCZOS overshoots below 0 next to strokes
    box = box * np.float32(255.0 / float(box.max()))  # [h',w'], ink max 255 as in MNIST

    height, width = box.shape
    total = float(box.sum())
    com_row = float(box.sum(axis=1) @ np.arange(height)) / total
    com_col = float(box.sum(axis=0) @ np.arange(width)) / total
    top = _place(com_row, height)
    left = _place(com_col, width)
    digit = np.zeros((_MNIST_SIDE, _MNIST_SIDE), dtype=np.float32)
    digit[top : top + height, left : left + width] = box
    return np.clip(digit, 0.0, 255.0)


def _no_ink() -> EmptyImageError:
    return EmptyImageError(
        "the image contains no ink (it is blank): draw a digit, or send a picture of a dark "
        "digit on a light background or a light digit on a dark one"
    )


def _place(com: float, extent: int) -> int:
    """Offset putting a box's centre of mass `com` (box coordinates) nearest to _CENTRE."""
    offset = math.floor(_CENTRE - com + 0.5)  # round half up, as a whole-pixel shift
    return min(max(offset, 0), _MNIST_SIDE - extent)


def preprocess_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Uploaded image bytes -> float32 [28,28] MNIST-style digit (see the module docstring).

    decode_image -> to_grayscale -> to_mnist, except that an image with a side longer than
    _WORKING_SIDE is shrunk by an integer factor on the way (a 12 MP photo: several times
    faster, a fraction of the memory): a JPEG decodes straight to a smaller size (DCT
    scaling), and the luminance is box-averaged before the ink is found. The 20x20 digit
    box never needs that much resolution, and averaging keeps thin strokes.
    """
    image = _open(data, max_pixels)
    factor = _shrink_factor(image.size)
    if factor > 1:  # a no-op but for JPEG; "L" decodes only the luminance
        image.draft("L" if image.mode == "RGB" else None, (image.width // factor, image.height // factor))
    luma = _luma_of(_load(image, max_pixels))
    factor = _shrink_factor((luma.height, luma.width))
    if factor > 1:
        luma = _whole(np.asarray(Image.fromarray(_expand(luma)).reduce(factor)))  # [H/f,W/f], area means
    found = _find_ink(luma)
    if found is None:
        raise _no_ink()
    return to_mnist(found[0])  # the ink's rectangle: outside it the image is 0


def _shrink_factor(size: tuple[int, ...]) -> int:
    return -(-max(size) // _WORKING_SIDE)  # ceil


# --- JSON pixel arrays -> [N,1,28,28] ----------------------------------------------------

_SHAPE_HINT = "expected a 28x28 array or a list of 28x28 arrays"


def pixels_to_batch(pixels: object) -> np.ndarray:
    """JSON pixels (one 28x28 nested list, or a list of them) -> float32 [N,1,28,28].

    The values are taken as they are (MNIST-style: 0..255, white ink on black); only the
    shape and the range are checked. Anything NumPy reads as a number is one (as JSON
    decoding and pydantic's lax mode would have it); null reads as NaN and is refused.
    """
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
    rows: list[list[object]] = []
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
