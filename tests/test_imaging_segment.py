"""service/imaging/segment.py: numbers of real MNIST digits cut into their digits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imaging import read_number_bytes
from service.imaging.ink import find_ink
from service.imaging.segment import split_digits
from testkit import handwriting


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def _row(digits: list[np.ndarray], gap: int, scale: int = 4) -> np.ndarray:
    """uint8: MNIST digits (cropped to their columns) side by side, `gap` pixels apart, white on black."""
    parts = []
    for digit in digits:
        cols = np.flatnonzero(digit.any(axis=0))
        parts.append(np.kron(digit[:, cols[0] : cols[-1] + 1], np.ones((scale, scale), np.uint8)))
        parts.append(np.zeros((28 * scale, gap), np.uint8))
    return np.pad(np.hstack(parts[:-1]), 20)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_generated_numbers_are_cut_into_their_digits(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    digits, labels = mnist_test_sample
    right = 0
    samples = list(handwriting.numbers(digits, labels, 40, seed=31))
    for sample in samples:
        found = read_number_bytes(sample.data)
        if len(found) == len(sample.text):
            right += 1
            for digit, box in zip(found, sample.boxes, strict=True):
                assert _iou(digit.box, box) > 0.5, (sample.kind, digit.box, box)
                assert digit.pixels.shape == (28, 28)
    assert right >= 0.85 * len(samples), f"{right} of {len(samples)} numbers cut into the right count"


def test_digits_come_left_to_right_with_their_boxes(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    digits, _ = mnist_test_sample
    row = _row([digits[0], digits[1], digits[2]], gap=12)
    found = read_number_bytes(_png(row))
    assert len(found) == 3
    xs = [d.box[0] for d in found]
    assert xs == sorted(xs)
    for digit in found:  # each box holds ink on all four edges' rows/columns
        x, y, w, h = digit.box
        crop = row[y : y + h, x : x + w]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()


def test_a_digit_in_two_pieces_stays_one(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    digits, labels = mnist_test_sample
    five = digits[int(np.flatnonzero(labels == 5)[0])].copy()
    rows = np.flatnonzero(five.any(axis=1))
    five[rows[0] + len(rows) // 3 : rows[0] + len(rows) // 3 + 2] = 0  # a band across: two pieces
    row = _row([five, digits[1]], gap=10)
    ink = find_ink(row.astype(np.float32))
    assert len(ink.boxes) >= 3  # the five is in pieces...
    assert len(split_digits(ink)) == 2  # ...and still one digit


def test_boxes_are_in_the_uploaded_images_pixels(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """An image larger than the working size is read shrunk; its boxes are scaled back."""
    digits, _ = mnist_test_sample
    small = _row([digits[3], digits[4]], gap=40)
    large = np.kron(small, np.ones((6, 6), np.uint8))  # wider than WORKING_SIDE
    boxes_small = [d.box for d in read_number_bytes(_png(small))]
    boxes_large = [d.box for d in read_number_bytes(_png(large))]
    assert len(boxes_small) == len(boxes_large) == 2
    for a, b in zip(boxes_small, boxes_large, strict=True):
        assert _iou(tuple(6 * v for v in a), b) > 0.8


@pytest.mark.parametrize("overlap", [0, 6, 20])
def test_touching_digits_never_crash(mnist_test_sample: tuple[np.ndarray, np.ndarray], overlap: int) -> None:
    """Best effort: touching or overlapping digits give one or more digits, each a valid input."""
    digits, _ = mnist_test_sample
    left, right = np.kron(digits[5], np.ones((4, 4), np.uint8)), np.kron(digits[6], np.ones((4, 4), np.uint8))
    cols_l, cols_r = np.flatnonzero(left.any(axis=0)), np.flatnonzero(right.any(axis=0))
    left, right = left[:, cols_l[0] : cols_l[-1] + 1], right[:, cols_r[0] : cols_r[-1] + 1]
    width = left.shape[1] + right.shape[1] - overlap
    row = np.zeros((112, width), np.uint8)
    row[:, : left.shape[1]] = left
    np.maximum(row[:, width - right.shape[1] :], right, out=row[:, width - right.shape[1] :])
    found = read_number_bytes(_png(np.pad(row, 16)))
    assert 1 <= len(found) <= 3
    for digit in found:
        assert digit.pixels.shape == (28, 28) and digit.pixels.max() == pytest.approx(255.0)


def test_a_slanted_one_lifted_halfway_stays_one(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Two halves of a slanted stroke share no column: the upper half joins its nearest
    neighbour (the lower half), not the digit beside it."""
    digits, labels = mnist_test_sample
    one = np.zeros((28, 28), np.uint8)
    for row in range(4, 24):  # a stroke leaning right, 2 px wide, lifted at rows 12-14
        if not 12 <= row <= 14:
            col = 4 + (23 - row)
            one[row, col : col + 2] = 255
    three = digits[int(np.flatnonzero(labels == 3)[0])]
    row = _row([one, three], gap=12)
    ink = find_ink(row.astype(np.float32))
    assert len(ink.boxes) >= 3
    assert len(split_digits(ink)) == 2


def test_digits_all_broken_in_halves_are_counted_right(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Every digit lifted across its middle: the digits' height comes from the halves grouped
    by their columns, so no half is taken for a whole digit."""
    digits, _ = mnist_test_sample
    broken = []
    for digit in digits[10:14]:
        rows = np.flatnonzero(digit.any(axis=1))
        cut = digit.copy()
        cut[rows[0] + len(rows) // 2 : rows[0] + len(rows) // 2 + 2] = 0
        broken.append(cut)
    assert len(read_number_bytes(_png(_row(broken, gap=14)))) == 4


def test_blurred_digits_whose_edges_touch_are_two(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Two digits a few pixels apart, blurred until their faint edges join into one piece: their
    dark cores part them again."""
    import cv2

    digits, labels = mnist_test_sample
    pair = [digits[int(np.flatnonzero(labels == d)[0])] for d in (4, 5)]
    row = _row(pair, gap=2).astype(np.float32)
    page = 230.0 - 0.75 * cv2.GaussianBlur(row, (0, 0), 2.5)  # dark ink on light paper
    ink = find_ink(page)
    assert len(ink.boxes) == 1  # the blur joined them...
    found = split_digits(ink)
    assert len(found) == 2  # ...and they are read as two
    assert found[0].box[0] + found[0].box[2] <= found[1].box[0] + 4
