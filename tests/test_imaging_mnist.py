"""service/imaging/mnist.py: the MNIST recipe on real MNIST digits, and JSON pixel arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from service.imaging import NoInkError, PixelArrayError, pixels_to_batch, to_mnist

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """The first 50 MNIST test images, uint8 [N,28,28], white ink on black."""
    with gzip.open(SAMPLE / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:50]


# --- the MNIST recipe -------------------------------------------------------------------------


def test_to_mnist_centres_the_mass_and_fits_20x20(digits: np.ndarray) -> None:
    """Any digit, shifted and scaled, comes out centred by its mass in a 20x20 box."""
    for digit in digits[:10]:
        big = np.kron(digit.astype(np.float32), np.ones((5, 5), np.float32))  # [140,140]
        canvas = np.zeros((300, 400), np.float32)
        canvas[150:290, 10:150] = big
        out = to_mnist(canvas)
        rows, cols = np.flatnonzero(out.any(axis=1)), np.flatnonzero(out.any(axis=0))
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21
        total = out.sum()
        com = (out.sum(axis=1) @ np.arange(28) / total, out.sum(axis=0) @ np.arange(28) / total)
        assert abs(com[0] - 14.0) <= 0.75 and abs(com[1] - 14.0) <= 0.75
        assert out.max() == pytest.approx(255.0)
        np.testing.assert_allclose(out, to_mnist(digit.astype(np.float32)), atol=90)  # same digit


def test_to_mnist_of_mnist_is_mnist(digits: np.ndarray) -> None:
    for digit in digits:
        assert np.corrcoef(digit.ravel(), to_mnist(digit.astype(np.float32)).ravel())[0, 1] > 0.99


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_thin_vertical_stroke_is_a_centred_one(width: int) -> None:
    """A "1" one to three pixels wide (its box [n,1] or [n,2]) is centred like any digit."""
    field = np.zeros((200, 100), np.float32)
    field[20:180, 50 : 50 + width] = 255.0
    out = to_mnist(field)
    cols = np.flatnonzero(out.any(axis=0))
    assert out.any(axis=1).sum() == 20 and 13 <= cols.mean() <= 15


def test_to_mnist_refuses_an_empty_field() -> None:
    with pytest.raises(NoInkError):
        to_mnist(np.zeros((28, 28), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        to_mnist(np.ones((2, 28, 28), np.float32))


def test_all_zero_pixels_have_no_ink(digits: np.ndarray) -> None:
    """An all-zero array is a blank image, refused as a blank upload is."""
    with pytest.raises(NoInkError, match="no ink"):
        pixels_to_batch([[0] * 28] * 28)
    with pytest.raises(NoInkError, match="image 1 "):
        pixels_to_batch([digits[0].tolist(), [[0.0] * 28] * 28])


# --- JSON pixel arrays ------------------------------------------------------------------------


def test_pixels_one_image(digits: np.ndarray) -> None:
    batch = pixels_to_batch(digits[0].tolist())
    assert batch.shape == (1, 1, 28, 28)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, 0], digits[0])  # taken as is, not re-processed


def test_pixels_list_of_images(digits: np.ndarray) -> None:
    batch = pixels_to_batch([d.tolist() for d in digits[:3]])
    assert batch.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(batch[:, 0], digits[:3])


def test_pixels_accepts_arrays_and_floats(digits: np.ndarray) -> None:
    assert pixels_to_batch(digits[:2]).shape == (2, 1, 28, 28)
    assert pixels_to_batch((digits[0] / 1.0).tolist()).shape == (1, 1, 28, 28)


def test_integer_and_float_pixels_read_the_same(digits: np.ndarray) -> None:
    # Whole numbers 0..255 take a faster conversion than other numbers: the results must not differ.
    ints, floats = [d.tolist() for d in digits[:3]], [(d / 1.0).tolist() for d in digits[:3]]
    np.testing.assert_array_equal(pixels_to_batch(ints), pixels_to_batch(floats))
    np.testing.assert_array_equal(pixels_to_batch(ints[0]), pixels_to_batch(floats[0]))
    assert pixels_to_batch(ints).flags.writeable
    assert pixels_to_batch(_with(12.5))[0, 0, 3, 5] == 12.5  # one non-integer: the general path, same answer
    assert pixels_to_batch(_with(True))[0, 0, 3, 5] == 1.0  # a bool reads as NumPy reads it, on both paths
    assert pixels_to_batch(_with(255))[0, 0, 3, 5] == 255.0


def _zeros() -> list[list[float]]:
    return [[0] * 28 for _ in range(28)]


def _with(value: object, row: int = 3, column: int = 5) -> list[list[object]]:
    image: list[list[object]] = [list(r) for r in _zeros()]
    image[row][column] = value
    return image


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        ([[0] * 28] * 27, "expected a 28x28 array or a list of 28x28 arrays, got shape (27, 28)"),
        ([[[0] * 28] * 28] * 2 + [[[0] * 27] * 28], "ragged"),
        ([[0] * 28] * 27 + [[0] * 27], "ragged"),
        ([], "got shape (0,)"),
        (5, "got shape ()"),
        ([[[[0] * 28] * 28]], "got shape (1, 1, 28, 28)"),
        ([["a"] * 28] * 28, "values must be numbers between 0 and 255; could not convert string"),
        (_with({"r": 1}), "values must be numbers between 0 and 255; float() argument"),
        (
            _with(None),
            "values must be finite numbers between 0 and 255; found null at image 0, row 3, column 5",
        ),
        (_with(float("nan")), "finite numbers between 0 and 255; found nan at image 0, row 3, column 5"),
        (_with(float("inf")), "finite numbers between 0 and 255; found inf at image 0, row 3, column 5"),
        (
            _with(10**40),
            f"finite numbers between 0 and 255; found {10**40} at image 0",
        ),
        (_with(300), "values must be between 0 and 255; found 300.0 at image 0, row 3, column 5"),
        (_with(256), "values must be between 0 and 255; found 256.0 at image 0, row 3, column 5"),
        (_with(-1), "values must be between 0 and 255; found -1.0 at image 0, row 3, column 5"),
        (_with(10**30), "values must be between 0 and 255; found 1e+30"),
        ([_zeros(), _with(255.5, 27, 0)], "found 255.5 at image 1, row 27, column 0"),
    ],
    ids=[
        "27 rows",
        "ragged images",
        "ragged rows",
        "empty",
        "scalar",
        "4-d",
        "strings",
        "object",
        "null",
        "nan",
        "inf",
        "overflow",
        "300",
        "256",
        "-1",
        "huge int",
        "second image",
    ],
)
def test_bad_pixel_arrays_are_422(pixels: object, expected: str) -> None:
    with pytest.raises(PixelArrayError) as caught:
        pixels_to_batch(pixels)
    assert expected in str(caught.value)


def test_pixels_at_the_limits_are_accepted() -> None:
    batch = pixels_to_batch(_with(255))
    assert batch.max() == 255.0
    assert batch.min() == 0.0


