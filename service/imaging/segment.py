"""A handwritten number -> its digits, left to right, each as the model's 28x28 input.

The ink's connected pieces (ink.py) are grouped into digits:

1. pieces whose columns overlap by at least half the narrower one belong to one digit (a 5 or
   a 7 drawn in two strokes, a broken loop): digits side by side do not share columns, even
   with a gap of a few pixels between them, whatever their sizes and baselines; a fragment
   (much shorter than the digits) joins the digit it shares the most columns with;
2. a fragment that shares no column with a digit (a slanted 1 lifted halfway, a 4's arm beside
   its stem) joins its nearest neighbour, fragment or digit, when the gap between their boxes
   is under half a digit's height: fragments of one digit find each other first, and what they
   make is a digit when it is tall enough;
3. specks (a piece far smaller than the digits' height) join the digit nearest to them, or
   are dropped when none is near;
4. touching digits (best effort): a group wider than a digit could be is grouped again from its
   clearly dark cores alone (the faint edges of two blurred digits often touch where their
   strokes do not), each faint pixel going to the nearest core; a group still much wider than
   the digits are tall is cut into as many digits as its width suggests, each cut at the column
   with the least ink near where an even split would put it. Two touching digits never crash
   the reading; they may be read wrong when the cut misses their joint.

Each digit's ink (only its own pieces, never a neighbour's stroke reaching into its box) then
goes through the MNIST recipe of mnist.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from service.imaging.ink import Ink
from service.imaging.mnist import to_mnist

__all__ = ["DigitImage", "split_digits"]

Box = tuple[int, int, int, int]  # x, y, width, height

# Columns shared by at least this fraction of the narrower group: the same digit. A fragment
# (shorter than this fraction of the digits' height: a 5's bar, half of a broken stroke) joins
# a group it shares any column with.
_SAME_DIGIT_OVERLAP = 0.5
_FRAGMENT = 0.6
# A fragment sharing no column with a digit joins its nearest neighbour within this many
# digit heights (the larger of the horizontal and the vertical gap between their boxes).
_FRAGMENT_REACH = 0.5
# A group both narrower and shorter than this fraction of the digits' height is a speck...
_SPECK = 0.25
# ...which joins a digit within this many digit heights, horizontally, or is dropped.
_SPECK_REACH = 0.5
# A group wider than this many times the digits' height is grouped again from its cores...
_SEPARATE_ASPECT = 1.2
# ...and one wider than this many times holds touching digits...
_TOUCHING_ASPECT = 2.0
# ...about this many heights wide each; the cut is sought within this fraction of a digit.
_DIGIT_ASPECT = 0.9
_CUT_WINDOW = 0.3


@dataclass(frozen=True, slots=True)
class DigitImage:
    """One digit of a number: float32 [28,28] MNIST-style pixels and its box (x, y, width,
    height) in the uploaded image's pixels."""

    pixels: np.ndarray
    box: Box


@dataclass(slots=True)
class _Group:
    pieces: list[int]  # piece numbers (labels), 1-based
    left: int
    top: int
    right: int  # exclusive
    bottom: int  # exclusive

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def absorb(self, other: _Group) -> None:
        self.pieces += other.pieces
        self.left, self.top = min(self.left, other.left), min(self.top, other.top)
        self.right, self.bottom = max(self.right, other.right), max(self.bottom, other.bottom)


def split_digits(ink: Ink, *, scale: float = 1.0) -> list[DigitImage]:
    """The ink of an image -> its digits left to right. `scale` maps the ink's pixels to the
    uploaded image's (luma.Luma.scale)."""
    pieces = [_Group([k + 1], int(x), int(y), int(x + w), int(y + h)) for k, (x, y, w, h) in enumerate(ink.boxes)]
    groups, height = _grouped(pieces)
    digits: list[DigitImage] = []
    for group in sorted(groups, key=lambda g: g.left):
        region = ink.strength[group.top : group.bottom, group.left : group.right]
        labels = ink.labels[group.top : group.bottom, group.left : group.right]
        own = labels == group.pieces[0] if len(group.pieces) == 1 else np.isin(labels, group.pieces)
        pixels = np.where(own, region, np.float32(0.0))  # [h,w]: this digit's ink only
        for offset, separated in _separated(pixels, ink.core, height):
            for start, stop in _cuts(separated, height):
                part = separated[:, start:stop]
                rows = np.flatnonzero(part.any(axis=1))
                if not rows.size:
                    continue
                box = (group.left + offset + start, group.top + int(rows[0]), stop - start, int(rows[-1] - rows[0] + 1))
                digits.append(DigitImage(to_mnist(part), _scaled(box, scale)))
    return digits


def _grouped(pieces: list[_Group]) -> tuple[list[_Group], float]:
    """Pieces -> the groups that are digits, and the digits' typical height."""
    # The digits' height from a first grouping by shared columns alone: a digit in two halves
    # (a band lifted across its middle) would otherwise set the height to half a digit's.
    first = _merge_overlapping([_Group(list(g.pieces), g.left, g.top, g.right, g.bottom) for g in pieces], 0.0)
    tallest = max(g.height for g in first)
    typical = float(np.median([g.height for g in first if 2 * g.height >= tallest]))
    groups = _merge_overlapping(pieces, _FRAGMENT * typical)
    groups = _join_nearest(groups, _FRAGMENT * typical, _FRAGMENT_REACH * typical)
    height = float(np.median([g.height for g in groups if not _is_speck(g, groups)] or [g.height for g in groups]))
    return _attach_specks(groups, height), height


def _separated(pixels: np.ndarray, core: float, height: float) -> list[tuple[int, np.ndarray]]:
    """A group's ink -> (first column, ink) of each digit its cores make (rule 4): the group
    itself unless it is wider than a digit and its cores group into several digits."""
    width = pixels.shape[1]
    if width <= _SEPARATE_ASPECT * height:
        return [(0, pixels)]
    count, cores, stats, _ = cv2.connectedComponentsWithStats((pixels >= core).view(np.uint8), connectivity=8)
    if count < 3:
        return [(0, pixels)]
    pieces = [_Group([k], int(x), int(y), int(x + w), int(y + h)) for k, (x, y, w, h, _) in enumerate(stats) if k]
    groups, _ = _grouped(pieces)
    if len(groups) < 2:
        return [(0, pixels)]
    # Every ink pixel belongs to its nearest core: the labels of the cores' zero-distance regions.
    _, nearest = cv2.distanceTransformWithLabels(
        (cores == 0).view(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_CCOMP
    )
    to_core = np.zeros(int(nearest.max()) + 1, np.int32)
    to_core[nearest[cores > 0]] = cores[cores > 0]
    owner = to_core[nearest]
    parts = []
    for group in sorted(groups, key=lambda g: g.left):
        part = np.where(np.isin(owner, group.pieces), pixels, np.float32(0.0))
        columns = np.flatnonzero(part.any(axis=0))
        if columns.size:
            parts.append((int(columns[0]), part[:, columns[0] : columns[-1] + 1]))
    return parts


def _merge_overlapping(groups: list[_Group], fragment: float) -> list[_Group]:
    """Union the pieces of each digit: first the full-height ones sharing at least half the
    narrower one's columns (until none do: a merge can create a new overlap), then each fragment
    (shorter than `fragment`) joins the group it shares the most columns with, so a fragment
    lying across two digits joins one, never bridges them."""
    whole = [g for g in groups if g.height >= fragment]
    fragments = [g for g in groups if g.height < fragment]
    merged = True
    while merged:
        merged = False
        whole.sort(key=lambda g: g.left)
        out: list[_Group] = []
        for group in whole:
            for kept in out:
                if _shared(kept, group) >= _SAME_DIGIT_OVERLAP * min(kept.width, group.width):
                    kept.absorb(group)
                    merged = True
                    break
            else:
                out.append(group)
        whole = out
    for piece in sorted(fragments, key=lambda g: -g.width):
        shared = [_shared(g, piece) for g in whole]
        best = int(np.argmax(shared)) if shared else -1
        if best >= 0 and shared[best] > 0:
            whole[best].absorb(piece)
        else:
            whole.append(piece)  # alone: see _join_nearest
    return whole


def _join_nearest(groups: list[_Group], fragment: float, reach: float) -> list[_Group]:
    """Each group still shorter than `fragment`, smallest first, joins its nearest group within
    `reach` (rule 2); one with none that near stays alone (a speck, or a small digit)."""
    groups = list(groups)
    settled: set[int] = set()
    while True:
        short = [g for g in groups if g.height < fragment and id(g) not in settled]
        if not short or len(groups) < 2:
            return groups
        piece = min(short, key=lambda g: g.height * g.width)
        others = [g for g in groups if g is not piece]
        gaps = [_gap(piece, g) for g in others]
        nearest = int(np.argmin(gaps))
        if gaps[nearest] <= reach:
            others[nearest].absorb(piece)
            groups = others
        else:
            settled.add(id(piece))


def _gap(a: _Group, b: _Group) -> int:
    """The gap between two boxes: the larger of the horizontal and the vertical one (0: touching)."""
    across = max(a.left - b.right, b.left - a.right, 0)
    down = max(a.top - b.bottom, b.top - a.bottom, 0)
    return max(across, down)


def _shared(a: _Group, b: _Group) -> int:
    """How many columns two groups share."""
    return min(a.right, b.right) - max(a.left, b.left)


def _is_speck(group: _Group, groups: list[_Group]) -> bool:
    tallest = max(g.height for g in groups)
    return group.width < _SPECK * tallest and group.height < _SPECK * tallest


def _attach_specks(groups: list[_Group], height: float) -> list[_Group]:
    """Specks join the nearest digit (by the horizontal gap between their boxes) within reach."""
    digits = [g for g in groups if not (g.width < _SPECK * height and g.height < _SPECK * height)]
    if not digits:
        return groups  # only small marks: each is read as it is
    for speck in (g for g in groups if g not in digits):
        gaps = [max(d.left - speck.right, speck.left - d.right, 0) for d in digits]
        nearest = int(np.argmin(gaps))
        if gaps[nearest] <= _SPECK_REACH * height:
            digits[nearest].absorb(speck)
    return digits


def _cuts(pixels: np.ndarray, height: float) -> list[tuple[int, int]]:
    """Column ranges of the digits in one group: the whole group, unless it is too wide for one
    digit (touching digits), then cut at the columns with the least ink near the even split."""
    width = pixels.shape[1]
    if width <= _TOUCHING_ASPECT * height:
        return [(0, width)]
    count = max(2, round(width / (_DIGIT_ASPECT * height)))
    column_ink = pixels.sum(axis=0)
    window = max(1, round(_CUT_WINDOW * width / count))
    bounds = [0]
    for k in range(1, count):
        guess = round(k * width / count)
        low, high = max(bounds[-1] + 1, guess - window), min(width - 1, guess + window)
        if low >= high:
            continue
        bounds.append(low + int(np.argmin(column_ink[low:high])))
    bounds.append(width)
    return list(itertools.pairwise(bounds))


def _scaled(box: Box, scale: float) -> Box:
    if scale == 1.0:
        return box
    x, y, w, h = box
    return (round(x * scale), round(y * scale), max(1, round(w * scale)), max(1, round(h * scale)))
