"""Luminance -> ink: where the pen is, however the page is lit.

    luminance [H,W] --polarity--> ink darker than the paper
      --flatten--> divided by a large-scale estimate of the paper's brightness
      --threshold--> Otsu's, bounded below by the paper's own noise
      --components--> the ink's connected pieces (hysteresis: a piece keeps its faint
                      edges when it has at least one clearly dark pixel)

The paper's brightness is estimated on a thumbnail (64 to 128 pixels on the shorter side):
a morphological closing removes the strokes (anything darker and narrower than about a
quarter of the shorter side), smoothly varying light (a gradient, a vignette) and a shadow's edge stay,
and the estimate is scaled back up. Dividing by it turns a photo's uneven page into flat
paper, on which one global threshold works. A drawing or a clean scan (at least half of its
pixels exactly at the level of its corner) is flat already: it skips the noise estimate, the
polarity vote, the paper estimate and the hysteresis (its faint pixels are all a stroke's soft
edge), and works on the rectangle around the pixels off the paper's level only (a drawing's
digit is a part of its pad), with the threshold of the whole image. Filtering, morphology,
thresholding and labelling are OpenCV's (see the README for why OpenCV rather than scipy.ndimage).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from service.imaging.errors import no_ink
from service.imaging.luma import Luma

__all__ = ["Ink", "find_ink"]

# cv2 would otherwise start a thread pool per process: the service decodes in its own threads.
cv2.setNumThreads(1)

# The paper's brightness is estimated on a thumbnail of at least this many pixels on the shorter
# side, with a closing this fraction of it wide: strokes up to about a quarter of the short side.
_THUMB_SIDE = 64
_CLOSING_FRACTION = 17 / 64
# Images with a shorter side below this are small crops (an MNIST digit): no lighting to undo,
# no noise to smooth; the paper is their 90th percentile (after polarity, the paper is light).
_SMALL_SIDE = 64
_SMALL_PAPER_PERCENTILE = 90.0
# Gaussian smoothing (sigma, pixels) before anything else, on images that are neither small nor
# clean (pixel noise above _NOISY grey levels): sensor and JPEG noise drops about threefold,
# strokes (several pixels wide) barely change; drawings and clean scans are left as they are.
_SMOOTH_SIGMA = 1.0
_NOISY = 1.0
# Contrast is darkness relative to the paper, 0..255 (255: black on any paper). A piece of ink
# needs a pixel at least this dark, and at least _NOISE_SIGMAS above the paper's noise.
_MIN_CONTRAST = 40.0
_NOISE_SIGMAS = 8.0
# Its faint edges are kept down to this fraction of the high threshold (hysteresis), within
# this many pixels of a clearly dark one.
_LOW_FRACTION = 0.2
_EDGE_REACH = 3
# Pieces smaller than this fraction of the shorter side squared (and than 4 pixels) are specks.
_MIN_AREA_FRACTION = 4e-4
# Polarity: the other side wins only when it reaches this fraction of the stronger extreme.
_POLARITY_FLOOR = 0.25


@dataclass(frozen=True, slots=True)
class Ink:
    """The ink of an image: `strength` float32 [H,W] (0: paper, 255: black on any paper;
    0 outside the kept pieces), `labels` int32 [H,W] (piece 1..n, 0: paper), `boxes` int32
    [n,4] (x, y, width, height of piece k+1), `areas` int32 [n] (pixels) and `core`, the
    strength of clearly dark ink: each piece has pixels at least this strong, its faint edges
    are weaker."""

    strength: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    core: float


def find_ink(luma: Luma | np.ndarray) -> Ink:
    """Luminance (float32 [H,W] 0..255, or a `Luma`: a drawing pad's is the rectangle around its
    strokes) -> its ink. Raises NoInkError when there is none."""
    if not isinstance(luma, Luma):
        luma = Luma(np.asarray(luma, dtype=np.float32))
    shape = luma.image_shape
    if luma.rectangle.ndim != 2 or not luma.rectangle.size:
        raise ValueError(f"find_ink expects a non-empty 2-D [H,W] array, got shape {luma.rectangle.shape}")
    small = min(shape) < _SMALL_SIDE
    clean = _clean_contrast(luma)
    if clean is not None:
        contrast, origin = clean
        return _pieces(contrast, shape, origin, small, clean=True)
    image = luma.values
    if not small and _pixel_noise(image) > _NOISY:
        image = cv2.GaussianBlur(image, (0, 0), _SMOOTH_SIGMA)
    thumb = _thumbnail(image)
    if not _dark_ink(image, thumb):
        image, thumb = np.float32(255.0) - image, np.float32(255.0) - thumb  # light ink: now dark
    return _pieces(_flatten(image, thumb, small), shape, (0, 0), small, clean=False)


def _clean_contrast(luma: Luma) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A drawing or a clean scan: at least half of the pixels exactly at the paper's level (that
    of the top-left corner). Then the contrast is the distance from that level towards the
    farther extreme (the ink), scaled so that the extreme colour (black or white) is 255; else
    None (a photo, a noisy scan: the general path). The contrast is 0 wherever a pixel is at
    the paper's level, so only the rectangle around the other pixels is computed (a drawing's
    digit is a part of its pad): it comes with its (top, left) in the image. Of a `Luma` whose
    rectangle leaves the corner in its margin, only the rectangle is looked at: the margin is
    the paper's level."""
    if luma.whole or luma.origin == (0, 0):  # the corner may be in the rectangle: the whole image
        image, top, left = luma.values, 0, 0
        level = float(image[0, 0])
    else:
        image, level, (top, left) = luma.rectangle, float(np.float32(luma.margin)), luma.origin
    differs = image != np.float32(level)
    height, width = luma.image_shape
    if 2 * np.count_nonzero(differs) > height * width:
        return None
    x, y, w, h = cv2.boundingRect(differs.view(np.uint8))
    if not w:  # one flat tone
        raise no_ink()
    window = image[y : y + h, x : x + w]
    low, high, _, _ = cv2.minMaxLoc(window)
    low, high = min(low, level), max(high, level)  # as over the whole image
    if level - low > high - level:  # dark ink on light paper
        return (np.float32(level) - window) * np.float32(255.0 / level), (top + y, left + x)
    return (window - np.float32(level)) * np.float32(255.0 / max(255.0 - level, 1.0)), (top + y, left + x)


def _median(values: np.ndarray) -> float:
    """``np.median`` of finite values, the same value without its NaN check and its mean of the middle
    pair (on a photo those cost more than the selection itself: a sixth of its ink finding)."""
    flat = values.reshape(-1)
    middle = flat.size // 2
    if flat.size % 2:
        return float(np.partition(flat, middle)[middle])
    low, high = np.partition(flat, (middle - 1, middle))[middle - 1 : middle + 1]
    return float((low + high) / 2)  # in the values' dtype, as np.median's mean of the pair


def _pixel_noise(image: np.ndarray) -> float:
    """Robust sigma of the pixels' noise, from differences of horizontal neighbours (a sample):
    about 0 for a drawing or a clean scan, the sensor's noise for a photo."""
    sample = image[::4]
    differences = np.abs(sample[:, 1::2] - sample[:, :-1:2][:, : sample[:, 1::2].shape[1]])
    return 1.4826 * _median(differences) / np.sqrt(2.0)


def _dark_ink(image: np.ndarray, thumb: np.ndarray) -> bool:
    """Whether the ink is darker than the paper: the side of the paper's tone (the median of a
    thumbnail) that reaches farther, unless the other comes close. Then light paper (at least mid
    grey) carries dark ink: a photo's page lit unevenly reaches far on both sides, and so does an
    empty one. On dark paper the side with more mass beyond a floor wins (chalk on a board)."""
    low, high, _, _ = cv2.minMaxLoc(image)
    paper = _median(thumb)
    darkest, lightest = paper - low, high - paper
    floor = _POLARITY_FLOOR * max(darkest, lightest)
    if min(darkest, lightest) < floor:
        return darkest > lightest
    if paper >= 127.5:
        return True  # light paper with both extremes (uneven light, glare): pen on paper
    # Mid-grey or dark paper: the side with more mass beyond a floor around the *local* paper
    # (the thumbnail blurred over about a quarter of its shorter side) wins. Against a local
    # reference, a shadow's edge is as much lighter on one side as darker on the other, and
    # the page's lit half is paper, not ink; only the strokes tip the balance.
    sigma = _CLOSING_FRACTION * min(thumb.shape) / 2
    local = cv2.GaussianBlur(thumb, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    darker = float(np.maximum(local - np.float32(floor) - thumb, 0.0).sum())
    lighter = float(np.maximum(thumb - local - np.float32(floor), 0.0).sum())
    return darker > lighter


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Block means over f x f pixels, f the whole factor bringing the shorter side down to
    _THUMB_SIDE..2*_THUMB_SIDE (a few edge pixels left over are ignored): several times cheaper
    than resampling to an exact size."""
    height, width = image.shape
    factor = min(height, width) // _THUMB_SIDE
    if factor <= 1:
        return image
    rows, cols = height // factor, width // factor
    whole = image[: rows * factor, : cols * factor]
    return cv2.resize(whole, (cols, rows), interpolation=cv2.INTER_AREA)  # a whole ratio: block means


def _flatten(image: np.ndarray, thumb: np.ndarray, small: bool) -> np.ndarray:
    """Dark-ink luminance -> contrast float32 [H,W]: 255 * (1 - pixel / paper brightness);
    negative where a pixel is lighter than the estimate (noise, glare)."""
    if small:
        level = np.float32(max(float(np.percentile(image, _SMALL_PAPER_PERCENTILE)), 1.0))
        return np.float32(255.0) - image * (np.float32(255.0) / level)
    # Odd reflection continues the light's slope past the edges: with any other padding the
    # edge of a page darkening outwards (a vignette) is a valley, which a closing fills in.
    closing = 2 * round(_CLOSING_FRACTION * min(thumb.shape) / 2) + 1  # odd
    pad = closing // 2 + 1
    padded = np.pad(thumb, pad, mode="reflect", reflect_type="odd")
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (closing, closing))
    paper_thumb = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, kernel)  # strokes gone, light kept
    paper_thumb = paper_thumb[pad:-pad, pad:-pad]
    np.maximum(paper_thumb, 1.0, out=paper_thumb)
    height, width = image.shape
    factor = min(height, width) // _THUMB_SIDE if thumb.shape != image.shape else 1
    rows, cols = thumb.shape
    paper: np.ndarray = cv2.resize(paper_thumb, (cols * factor, rows * factor), interpolation=cv2.INTER_LINEAR)
    if paper.shape != image.shape:  # the few edge pixels the thumbnail left out: the nearest estimate
        paper = cv2.copyMakeBorder(paper, 0, height - paper.shape[0], 0, width - paper.shape[1], cv2.BORDER_REPLICATE)
    ratio: np.ndarray = cv2.divide(image, paper, scale=255.0)  # 255: paper, 0: black
    return np.float32(255.0) - ratio


def _pieces(contrast: np.ndarray, shape: tuple[int, ...], origin: tuple[int, int], small: bool, *, clean: bool) -> Ink:
    """Threshold the contrast and keep the connected pieces that are ink. `contrast` covers the
    rectangle at `origin` (top, left) of an image of `shape`, outside which it is 0 (paper).
    `clean`: the paper is flat and noiseless, so every faint pixel is a stroke's edge."""
    high, low = _thresholds(contrast, shape, origin, small, clean)
    mask: np.ndarray = (contrast > low).view(np.uint8)
    if not clean:
        # Hysteresis within reach: faint pixels count where they are near clearly dark ones (a
        # stroke's soft edge), never a faint region (what is left of a shadow's edge) a stroke
        # touches.
        strong = (contrast > high).view(np.uint8)
        near = cv2.dilate(strong, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * _EDGE_REACH + 1,) * 2))
        mask = cv2.bitwise_and(mask, near)
    # Everything below works on the rectangle around the ink (a drawing's digit is a part of its
    # pad), and labels only: OpenCV's labelling with statistics costs several times more than the
    # labelling, and the statistics come from the ink's pixels alone (none are needed for one
    # piece: its box is the rectangle).
    left, top, width, height = cv2.boundingRect(mask)
    if not width:
        raise no_ink()
    inked = np.ascontiguousarray(mask[top : top + height, left : left + width])
    ink = contrast[top : top + height, left : left + width]
    top, left = top + origin[0], left + origin[1]  # in the image
    region = (slice(top, top + height), slice(left, left + width))
    short = min(shape)
    min_area = max(4.0, _MIN_AREA_FRACTION * short * short) if not small else 1.0
    count, labels = cv2.connectedComponents(inked, connectivity=8, ltype=cv2.CV_32S)
    if count == 2:  # one piece (a digit drawn in one stroke): its box is the rectangle
        areas: np.ndarray = np.array([0, cv2.countNonZero(inked)])
    else:
        points = cv2.findNonZero(inked).reshape(-1, 2)  # (x, y) of the labelled pixels, in the region
        xs, ys = points[:, 0], points[:, 1]
        which = labels[ys, xs]
        areas = np.bincount(which, minlength=count)
    keep: np.ndarray = areas >= min_area
    if clean and count == 2:  # one piece: every clearly dark pixel is in it
        keep[1] &= float(ink.max()) > high
    elif clean:  # without the hysteresis: a piece needs a clearly dark pixel
        has_dark = np.zeros(count, dtype=bool)
        has_dark[labels[ink > high]] = True
        keep &= has_dark
    keep[0] = False  # the paper
    kept = np.flatnonzero(keep)
    if not kept.size:
        raise no_ink()
    if count == 2:
        boxes = np.array([[0, 0, width, height]], np.int32)
    else:
        if kept.size < count - 1:  # some pieces dropped (usually none: then the labels stand)
            relabel = np.zeros(count, dtype=np.int32)
            relabel[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
            labels, which = relabel[labels], relabel[which]
        boxes = _boxes(ys, xs, which, kept.size)
    all_labels = np.zeros(shape, np.int32)
    all_labels[region] = labels
    strength = np.zeros(shape, np.float32)  # 0 off the ink
    np.copyto(strength[region], ink, where=labels > 0)  # a piece's pixels: contrast > low > 0, <= 255
    offset = np.array([left, top, 0, 0], np.int32)
    return Ink(strength, all_labels, (boxes + offset).astype(np.int32), areas[kept].astype(np.int32), high)


def _boxes(ys: np.ndarray, xs: np.ndarray, which: np.ndarray, count: int) -> np.ndarray:
    """int32 [count,4] x, y, width, height of pieces 1..count from their pixels' coordinates
    (`which`: each pixel's piece, 0 for a dropped one): grouped by a stable sort, then reduced."""
    order = np.argsort(which.astype(np.int16 if count < 32767 else np.int32), kind="stable")  # radix sort
    sizes = np.bincount(which, minlength=count + 1)
    starts = np.cumsum(sizes)[:-1]  # where pieces 1..count start in `order`
    ys, xs = ys[order], xs[order]
    top, bottom = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    left, right = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    return np.stack([left, top, right - left + 1, bottom - top + 1], axis=1).astype(np.int32)


def _thresholds(
    contrast: np.ndarray, shape: tuple[int, ...], origin: tuple[int, int], small: bool, clean: bool
) -> tuple[float, float]:
    """(high, low): Otsu's threshold of the contrast, raised to the minimum contrast and above
    the paper's noise (a robust sigma from the median absolute deviation of a sample; none on
    clean paper, whose contrast is exactly 0). `contrast` covers the rectangle at `origin` of
    an image of `shape` (a clean image's: 0 outside it), as in `_pieces`."""
    centre = sigma = 0.0
    if not clean:
        sample = contrast if small else contrast[::4, ::4]
        centre = _median(sample)
        sigma = 1.4826 * _median(np.abs(sample - np.float32(centre)))
    otsu, _ = cv2.threshold(_levels(contrast, shape, origin, 1 if small else 2), 0, 255,
                            cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    high = max(float(otsu), _MIN_CONTRAST, centre + _NOISE_SIGMAS * sigma)
    low = max(_LOW_FRACTION * high, centre + 0.5 * _NOISE_SIGMAS * sigma)
    return high, low


def _levels(contrast: np.ndarray, shape: tuple[int, ...], origin: tuple[int, int], step: int) -> np.ndarray:
    """uint8 contrast levels of every `step`-th row and column of the image, for Otsu's
    threshold: the rectangle's own, among the zeros (paper) around it. The image's grid, not
    the rectangle's, so that the threshold is the one of the whole image's contrast."""
    top, left = origin
    levels = np.clip(contrast[-top % step :: step, -left % step :: step], 0.0, 255.0).astype(np.uint8)
    if contrast.shape == shape:
        return levels
    whole = np.zeros((-(-shape[0] // step), -(-shape[1] // step)), np.uint8)
    row, col = -(-top // step), -(-left // step)  # the rectangle's first sampled row and column
    whole[row : row + levels.shape[0], col : col + levels.shape[1]] = levels
    return whole
