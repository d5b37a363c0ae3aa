"""Bytes -> pixels: the accepted formats, their size limits, EXIF orientation, and luminance.

    bytes --decode_image--> PIL image (checked format and size, upright)
          --decode_luma--> luma.Luma: float32 luminance 0..255, transparency flattened,
                           shrunk by a whole factor when larger than the working size

An 8-bit L, RGB or RGBA PNG up to the working size (a drawing pad's export) skips Pillow's
header parse (tens of microseconds, a tenth of such an upload's cost): its size comes from
the 33 bytes of its IHDR chunk, and libspng decodes it (spng.py: with the interpreter
released). A transparent one's luminance is the rectangle around its strokes: the pad
around them is one background tone, which is all the ink finding needs to know of it.

The size is checked from the header before any pixel is decoded (decompression bombs),
only the formats people send are tried, and a file that is not one of them is named in
the error ("HEIC images are not supported"). numpy + Pillow (libspng for PNG, OpenCV for
a few reductions).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from service.imaging import spng
from service.imaging.errors import ImageDecodeError, ImageTooLargeError
from service.imaging.luma import Luma
from service.imaging.png import PngHeader, png_header, with_stored_data

try:  # libspng decodes PNG about 1.7x as fast as Pillow's zlib path (bench/bench_imaging.py)
    import pyspng
except ImportError:  # an install without it decodes every PNG with Pillow
    pyspng = None

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_FORMATS", "WORKING_SIDE", "decode_image", "decode_luma", "luma_of"]

SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "BMP", "WEBP", "GIF"})
DEFAULT_MAX_PIXELS: int = 40_000_000

# decode_luma shrinks an image whose longer side exceeds this by a whole factor first: a digit
# needs no more than a couple of hundred pixels, a number of six digits a few hundred, and the
# cost follows the area. A JPEG (a photo) decodes straight to a smaller size by DCT scaling,
# nearly free, down to JPEG_WORKING_SIDE; a phone photo's digit is a good part of the frame.
WORKING_SIDE: int = 1024
JPEG_WORKING_SIDE: int = 512
# Alpha images: when at least this fraction of the area is opaque, the opaque part is the
# picture (a screenshot with transparent corners); below it, it is strokes on a transparent
# canvas and the alpha channel is the ink.
_OPAQUE_PICTURE_COVERAGE = 0.5
# Transparent pixels whose colour differs this much from the strokes are the paper.
_STROKE_CONTRAST = 64.0

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


# --- bytes / PIL image -> [H,W] luminance --------------------------------------------------

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SPNG_MODES = frozenset({"L", "RGB", "RGBA"})  # 8 bits a channel, as pyspng outputs them and Pillow reads them back
_WIDE_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def decode_luma(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, working_side: int = WORKING_SIDE) -> Luma:
    """Uploaded bytes -> their luminance, shrunk by a whole factor to at most `working_side`
    pixels a side (a JPEG: JPEG_WORKING_SIDE, decoding straight to the smaller size; others are
    box-averaged, which keeps thin strokes). Raises ImageDecodeError or ImageTooLargeError."""
    pixels = _small_png_pixels(data, max_pixels, working_side)
    if pixels is not None:  # a drawing pad's export, most uploads: no Pillow header parse
        if pixels.ndim == 2:
            return Luma(pixels.astype(np.float32), 1.0)  # grey: already the luminance
        if pixels.shape[2] == 4:
            return _composite_alpha(pixels)  # a drawing pad's RGBA: no Pillow image; its strokes' rectangle
        return Luma(luma_of(Image.fromarray(pixels, "RGB")), 1.0)
    image = _open(data, max_pixels)
    longest = max(image.size)  # the uploaded side, whatever the EXIF orientation
    jpeg = _FORMAT_ALIASES.get(image.format or "", image.format) == "JPEG"
    factor = _shrink_factor(image.size, min(working_side, JPEG_WORKING_SIDE) if jpeg else working_side)
    if factor > 1 and jpeg:  # DCT scaling; "L" decodes only the luminance
        image.draft("L" if image.mode in ("RGB", "YCbCr") else None, (image.width // factor, image.height // factor))
    pixels = _spng_pixels(data, image)
    if pixels is not None and pixels.ndim == 2 and max(pixels.shape) <= working_side:
        return Luma(pixels.astype(np.float32), 1.0)  # grey, small enough: already the luminance
    image = Image.fromarray(pixels, image.mode) if pixels is not None else _load(image, max_pixels)
    rest = _shrink_factor(image.size, working_side)
    transparent = image.mode in _ALPHA_MODES or "transparency" in image.info
    if rest > 1 and not transparent:  # area means in Pillow before any float copy: big uploads stay cheap
        image = _reducible(image).reduce(rest)
    luma = luma_of(image)
    if rest > 1 and transparent:  # flattened first (reduce does not weigh colours by alpha), then averaged
        luma = np.asarray(Image.fromarray(luma).reduce(rest))
    return Luma(luma, longest / max(luma.shape))


# The 8-bit colour types whose pixels libspng gives in the mode Pillow gives them.
_SPNG_COLOUR_MODES = {0: "L", 2: "RGB", 6: "RGBA"}


def _small_png_pixels(data: bytes, max_pixels: int, working_side: int) -> np.ndarray | None:
    """The pixels of an 8-bit L, RGB or RGBA PNG no larger than `working_side` a side (a
    drawing pad's export), by libspng, without Pillow's header parse; its declared size is
    checked against `max_pixels` from the IHDR first. None for anything else (Pillow decodes
    it, see `_spng_pixels`), and for data libspng refuses. libspng checks the same IHDR and
    the critical chunks, so what it accepts Pillow accepts too, with one exception: a
    metadata (ancillary) chunk failing its CRC, which Pillow's header parse refuses and
    libspng skips, and which cannot change the pixels."""
    if pyspng is None:
        return None
    header = png_header(data)
    if header is None or header.bit_depth != 8 or header.colour_type not in _SPNG_COLOUR_MODES:
        return None
    width, height = header.width, header.height
    if not (0 < width <= working_side and 0 < height <= working_side) or width * height > max_pixels:
        return None  # empty, large (shrunk on the general path) or too large (refused there)
    return _spng_decode(data, _SPNG_COLOUR_MODES[header.colour_type], header)


def _spng_decode(data: bytes, mode: str, header: PngHeader) -> np.ndarray | None:
    """libspng's pixels of a PNG whose header declares `mode` and this size, unless a chunk
    may change what Pillow would make of them (a colour-key transparency, EXIF or XMP metadata
    that may hold an orientation) or libspng refuses the data: None, and Pillow decodes it.
    The image data is inflated by ISA-L first where it can be (`png.with_stored_data`)."""
    if b"tRNS" in data or b"eXIf" in data or b"xmp" in data:
        return None
    source = with_stored_data(data, header) or data
    if spng.available():  # libspng with the interpreter released while it decodes
        return spng.load(source, mode, header.width, header.height)
    try:
        pixels = pyspng.load(source, mode)
    except (RuntimeError, ValueError):
        return None
    return pixels if pixels.shape[:2] == (header.height, header.width) else None


def _spng_pixels(data: bytes, image: Image.Image) -> np.ndarray | None:
    """The pixels of an 8-bit L, RGB or RGBA PNG by libspng, the same values Pillow decodes;
    None for everything else (other formats and modes, a colour-key transparency, EXIF or XMP
    metadata that may hold an orientation, no pyspng) and for data libspng refuses: Pillow then
    decodes it, and names what is wrong with it."""
    if pyspng is None or image.format != "PNG" or image.mode not in _SPNG_MODES or "transparency" in image.info:
        return None
    header = png_header(data)
    if header is None or (header.width, header.height) != image.size:
        return None
    return _spng_decode(data, image.mode, header)


def _reducible(image: Image.Image) -> Image.Image:
    """An opaque image in a mode Pillow's reduce() averages (L, RGB, I, F)."""
    if image.mode in ("L", "RGB", "I", "F"):
        return image
    if image.mode == "1":
        return _convert(image, "L")
    return _convert(image, "I" if image.mode in _WIDE_INT_MODES else "RGB")


def _shrink_factor(size: tuple[int, ...], working_side: int) -> int:
    return -(-max(size) // working_side)  # ceil


def luma_of(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> float32 [H,W] luminance 0..255, transparency flattened (see
    `_composite_alpha`); 16-bit and float images scaled by their mode's range."""
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        return _wide_to_luma(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_alpha(np.asarray(image if image.mode in ("RGBA", "LA") else _convert(image, "RGBA"))).values
    if image.mode == "LAB":
        return np.asarray(image.getchannel("L"), dtype=np.float32)  # L* is the lightness
    if image.mode != "L":
        image = _convert(image, "L")  # Pillow converts in C
    return np.asarray(image, dtype=np.float32)


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


def _composite_alpha(pixels: np.ndarray) -> Luma:
    """Flatten uint8 [H,W,4] RGBA or [H,W,2] LA pixels onto a background, as luminance (the
    colour's as Pillow's convert("L") gives it): the rectangle around the pixels other than
    transparent black, on a margin of the background.

    Where most of the area is transparent, the opaque pixels are the strokes and the alpha
    is the ink. The background is the colour under the transparent pixels when it contrasts
    with the strokes (a colour-key GIF or PNG whose transparent colour is the paper);
    otherwise, as in a browser canvas export whose untouched pixels are (0,0,0,0) whatever
    the stroke colour, it is the tone opposite to the strokes. Where most of the area is
    opaque (a screenshot with transparent corners), the picture goes onto its own paper
    tone; where all of it is (a canvas filled before drawing), it is the colour's luminance.
    A fully transparent image comes out uniform (no ink).
    """
    height, width, channels = pixels.shape
    pixels = np.ascontiguousarray(pixels)
    words = pixels.view(np.uint32 if channels == 4 else np.uint16)[..., 0]  # a pixel's bytes as one word
    left, top, inner_width, inner_height = cv2.boundingRect((words != 0).view(np.uint8))
    if not inner_width:  # every pixel is transparent black
        return Luma(np.zeros((height, width), dtype=np.float32))
    inner = pixels[top : top + inner_height, left : left + inner_width]
    alpha = np.ascontiguousarray(inner[..., -1])  # [h,w] uint8
    area = width * height
    total = cv2.sumElems(alpha)[0]  # an exact integer sum, faster than numpy's
    if total == 255.0 * area:  # every pixel opaque (so the rectangle is the image): no alpha to weigh
        return Luma(_grey(inner).astype(np.float32))
    if total == 0.0:
        return Luma(np.zeros((height, width), dtype=np.float32))
    luma = _grey(inner)  # [h,w] uint8, ignores alpha
    outside = area - alpha.size  # transparent black pixels around the rectangle
    opaque = alpha >= 128
    if total >= _OPAQUE_PICTURE_COVERAGE * 255.0 * area:
        background = float(np.median(luma[opaque]))  # the picture's paper
    else:
        strokes = luma[opaque] if opaque.any() else luma[alpha > 0]
        under = _hidden_median(luma[alpha == 0], outside)
        if under is not None and _contrasts(strokes, under):
            background = under
        else:
            background = 255.0 if cv2.mean(strokes)[0] < 127.5 else 0.0  # an exact sum, as numpy's mean
    weight = alpha.astype(np.float32) * np.float32(1 / 255)
    flat = np.float32(background) + weight * (luma - np.float32(background))
    return Luma(flat, 1.0, (top, left), (height, width), background)


def _grey(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h,w] luminance of [h,w,4] RGBA (Pillow's convert("L"), alpha ignored) or [h,w,2] LA."""
    if pixels.shape[2] == 2:
        return np.ascontiguousarray(pixels[..., 0])
    height, width = pixels.shape[:2]
    image = Image.frombuffer("RGBA", (width, height), np.ascontiguousarray(pixels), "raw", "RGBA", 0, 1)
    return np.asarray(image.convert("L"))


def _contrasts(strokes: np.ndarray, under: float) -> bool:
    """Whether the strokes (uint8 luminance) contrast with the colour `under` the transparent
    pixels: the 90th percentile of their distance from it reaches _STROKE_CONTRAST. A
    percentile is never beyond the farthest distance, so when that falls short (a browser
    canvas: dark strokes over transparent black) no percentile is needed."""
    darkest, lightest, _, _ = cv2.minMaxLoc(strokes)
    if max(lightest - under, under - darkest) < _STROKE_CONTRAST:
        return False
    return bool(np.percentile(np.abs(strokes - np.float32(under)), 90) >= _STROKE_CONTRAST)


def _hidden_median(hidden: np.ndarray, outside: int) -> float | None:
    """Median luminance of the fully transparent pixels: `hidden` inside the box and
    `outside` transparent black ones around it; None if there are none."""
    count = hidden.size + outside
    if not count:
        return None
    if outside >= (count + 1) // 2:  # the median is among the zeros
        return 0.0
    return float(np.median(np.concatenate([hidden.astype(np.float32), np.zeros(outside, np.float32)])))
