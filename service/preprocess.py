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
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

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


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate phone photos upright. A malformed EXIF block is ignored, not an error."""
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
    return _ink_from_luma(_luminance(image))


def _luminance(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 [H,W] luminance 0..255 (transparency flattened)."""
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        return _wide_to_luma(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_alpha(image)
    if image.mode == "LAB":
        return np.asarray(image.getchannel("L"), dtype=np.float32)  # L* is the lightness
    return np.asarray(_convert(image, "L"), dtype=np.float32)


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


def _composite_alpha(image: Image.Image) -> np.ndarray:
    """Flatten an image with transparency onto a background, as luminance [H,W] 0..255.

    Where most of the area is transparent, the opaque pixels are the strokes and the alpha
    is the ink (ink = alpha * contrast of the stroke colour against the background). The
    background is the colour under the transparent pixels when it contrasts with the
    strokes (a colour-key GIF or PNG whose transparent colour is the paper); otherwise, as
    in a browser canvas export whose untouched pixels are (0,0,0,0) whatever the stroke
    colour, it is the tone opposite to the strokes: black strokes go onto white, white
    onto black. Where most of the area is opaque (a screenshot with transparent corners),
    the opaque part is the picture and goes onto its own paper tone.
    """
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    luma = np.asarray(image.convert("L"))  # [H,W] uint8, ignores alpha
    alpha = np.asarray(image.getchannel("A"))  # [H,W] uint8
    coverage = float(alpha.mean()) / 255.0
    if coverage >= 1.0:
        return luma.astype(np.float32)
    if coverage <= 0.0:
        return np.zeros(luma.shape, dtype=np.float32)  # fully transparent: no ink
    opaque = alpha >= 128
    if coverage >= _OPAQUE_PICTURE_COVERAGE:
        background = _median_u8(luma[opaque])  # the picture's paper
    else:
        strokes = luma[opaque] if opaque.any() else luma[alpha > 0]
        hidden = luma[alpha == 0]
        under = _median_u8(hidden) if hidden.size else None
        if under is not None and np.percentile(np.abs(strokes - np.float32(under)), 90) >= _STROKE_CONTRAST:
            background = under
        else:
            background = 255.0 if float(strokes.mean()) < 127.5 else 0.0
    weight = alpha.astype(np.float32) * np.float32(1 / 255)
    return np.float32(background) + weight * (luma - np.float32(background))


def _median_u8(values: np.ndarray) -> float:
    """Median of uint8 values by histogram: linear time, no sort of a full image."""
    cumulative = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(cumulative, (cumulative[-1] + 1) // 2))


def _ink_from_luma(luma: np.ndarray) -> np.ndarray:
    """[H,W] luminance -> [H,W] ink: background 0, strongest ink 255, noise removed."""
    height, width = luma.shape
    ring = max(1, round(min(height, width) * _BORDER_FRACTION))
    border = np.concatenate(
        [luma[:ring].ravel(), luma[-ring:].ravel(), luma[:, :ring].ravel(), luma[:, -ring:].ravel()]
    )
    background = float(np.median(border))  # the majority tone at the edges is the paper
    noise = 1.4826 * float(np.median(np.abs(border - background)))  # robust sigma of the paper

    # Polarity: ink lies on the side of the background with more strong deviation. Headroom
    # decides it for clean images (nothing is darker than a black background); on grey
    # paper the ink's mass outweighs paper texture and glare.
    ink = luma - np.float32(background)  # [H,W], lighter > 0
    lightest, darkest = float(ink.max()), -float(ink.min())
    floor = 0.25 * max(lightest, darkest)
    if darkest > lightest:
        dark_ink = lightest < floor or _mass_beyond(-ink, floor) > _mass_beyond(ink, floor)
    else:
        dark_ink = darkest >= floor and _mass_beyond(-ink, floor) > _mass_beyond(ink, floor)
    if dark_ink:
        np.negative(ink, out=ink)
    np.maximum(ink, 0.0, out=ink)

    peak = max(darkest if dark_ink else lightest, 0.0)
    threshold = max(_NOISE_FRACTION * peak, _NOISE_SIGMAS * noise)
    if peak < _MIN_CONTRAST or peak < 2.0 * threshold:
        return np.zeros_like(luma)  # nothing stands out from the paper
    ink[ink < threshold] = 0.0
    _drop_isolated_pixels(ink)
    ink *= np.float32(255.0 / peak)
    return ink


def _mass_beyond(values: np.ndarray, floor: float) -> float:
    strong = values[values > floor]
    return float(strong.sum()) - floor * strong.size


def _drop_isolated_pixels(ink: np.ndarray) -> None:
    """Zero ink pixels with no ink among their 8 neighbours: noise specks, never strokes."""
    height, width = ink.shape
    stride = width + 2
    padded = np.zeros((height + 2, stride), dtype=bool)  # a 1-px frame: every neighbour exists
    padded[1:-1, 1:-1] = ink > 0.0
    flat = padded.ravel()
    centres = np.flatnonzero(flat)  # ink is sparse: look at its pixels only (flat indices)
    neighbours = np.zeros(centres.size, dtype=np.uint8)
    for offset in (-stride - 1, -stride, -stride + 1, -1, 1, stride - 1, stride, stride + 1):
        neighbours += flat[centres + offset]
    isolated = centres[neighbours == 0]
    ink[isolated // stride - 1, isolated % stride - 1] = 0.0


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
        raise EmptyImageError(
            "the image contains no ink (it is blank): draw a digit, or send a picture of a dark "
            "digit on a light background or a light digit on a dark one"
        )

    inked = ink > peak * _BBOX_FRACTION
    rows = np.flatnonzero(inked.any(axis=1))
    cols = np.flatnonzero(inked.any(axis=0))
    box = np.clip(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 0.0, None)  # [h,w]
    height, width = box.shape
    scale = _BOX_SIZE / max(height, width)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))  # Pillow: (w, h)
    if new_size != (width, height):
        # Pillow's LANCZOS widens its kernel with the reduction factor, so shrinking averages
        # the whole area (a 1-px line keeps its mass, re-stretched below) while keeping edges
        # sharper than BOX; on growing it interpolates smoothly. "F" mode keeps grey levels.
        box = np.asarray(Image.fromarray(box).resize(new_size, Image.Resampling.LANCZOS))
        box = np.clip(box, 0.0, None)  # LANCZOS overshoots below 0 next to strokes
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


def _place(com: float, extent: int) -> int:
    """Offset putting a box's centre of mass `com` (box coordinates) nearest to _CENTRE."""
    offset = int(np.floor(_CENTRE - com + 0.5))  # round half up, as a whole-pixel shift
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
    luma = _luminance(_load(image, max_pixels))  # [H,W]
    factor = _shrink_factor(luma.shape)
    if factor > 1:
        luma = np.asarray(Image.fromarray(luma).reduce(factor))  # [H/f,W/f], area means
    return to_mnist(_ink_from_luma(luma))


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
    try:
        # The fast path for the common case, one 28x28 list of ints: a single C-level
        # conversion, then vectorised checks. Overflow becomes inf and is refused below.
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
