"""service/imaging/ink.py: the ink of real MNIST digits however the page is lit, and blank pages."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from service.imaging import NoInkError, ink, preprocess_image_bytes
from service.imaging.decode import decode_luma
from service.imaging.ink import find_ink
from service.imaging.luma import Luma
from testkit import handwriting


@pytest.fixture(scope="module")
def session(models_dir: object) -> ort.InferenceSession:
    return ort.InferenceSession(str(models_dir) + "/lenet5.onnx", providers=["CPUExecutionProvider"])


def _lit_page(digit: np.ndarray, *, gradient: float, shadow: float) -> np.ndarray:
    """float32 [240,320]: the digit (dark, 4x) on grey paper lit by a left-to-right gradient of
    +-`gradient` levels, the right third in a shadow `shadow` darker."""
    paper = 170.0 + np.linspace(-gradient, gradient, 320, dtype=np.float32)[None, :].repeat(240, axis=0)
    paper[:, 220:] *= 1.0 - shadow
    ink = np.kron(digit.astype(np.float32) / 255.0, np.ones((4, 4), np.float32))  # [112,112]
    page = paper.copy()
    page[60:172, 100:212] = paper[60:172, 100:212] * (1.0 - ink) + 30.0 * ink
    return page


def test_gradient_and_shadow_leave_only_the_digit(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """The issue's example: a plainly readable dark digit on grey paper with a light gradient."""
    digits, _ = mnist_test_sample
    for digit in digits[:20]:
        ink = find_ink(_lit_page(digit, gradient=20.0, shadow=0.3))
        rows, cols = np.flatnonzero(ink.strength.any(axis=1)), np.flatnonzero(ink.strength.any(axis=0))
        truth_rows = np.flatnonzero(np.kron(digit, np.ones((4, 4))).any(axis=1)) + 60
        truth_cols = np.flatnonzero(np.kron(digit, np.ones((4, 4))).any(axis=0)) + 100
        assert abs(rows[0] - truth_rows[0]) <= 4 and abs(rows[-1] - truth_rows[-1]) <= 4
        assert abs(cols[0] - truth_cols[0]) <= 4 and abs(cols[-1] - truth_cols[-1]) <= 4


def test_ink_pieces_are_labelled_with_their_boxes(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    digits, _ = mnist_test_sample
    page = np.full((100, 300), 255.0, np.float32)
    page[20:76, 20:76] -= np.kron(digits[0], np.ones((2, 2))).astype(np.float32)
    page[20:76, 200:256] -= np.kron(digits[1], np.ones((2, 2))).astype(np.float32)
    ink = find_ink(page)
    assert ink.labels.max() == len(ink.boxes) == len(ink.areas) >= 2
    for k, (x, y, w, h) in enumerate(ink.boxes, start=1):
        ys, xs = np.nonzero(ink.labels == k)
        assert (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (x, y, w, h)
        assert ink.areas[k - 1] == xs.size
    assert not ink.strength[ink.labels == 0].any()


@pytest.mark.parametrize("page", [
    np.full((240, 320), 200.0, np.float32),
    np.linspace(120.0, 230.0, 320, dtype=np.float32)[None, :].repeat(240, axis=0),
    np.zeros((280, 280), np.float32),
], ids=["flat", "gradient", "black"])
def test_blank_pages_have_no_ink(page: np.ndarray) -> None:
    with pytest.raises(NoInkError, match="no ink"):
        find_ink(page)


def test_phone_photos_are_read(
    mnist_test_sample: tuple[np.ndarray, np.ndarray], session: ort.InferenceSession
) -> None:
    """Generated phone photos of MNIST test digits (testkit.handwriting.photos) through the whole
    upload path; the benchmark (bench/bench_imaging.py) measures the same on 500 and more."""
    digits, labels = mnist_test_sample
    samples = list(handwriting.photos(digits, labels, 60, seed=21))
    inputs = np.stack([preprocess_image_bytes(s.data) for s in samples])[:, None]
    (probabilities,) = session.run(["probabilities"], {"pixels": inputs})
    accuracy = float(np.mean(probabilities.argmax(axis=1) == [int(s.text) for s in samples]))
    assert accuracy >= 0.9, f"{accuracy:.1%} of the photos read right"


def test_photos_of_empty_paper_are_blank() -> None:
    refused = 0
    for sample in handwriting.empty_photos(20, seed=22):
        try:
            find_ink(decode_luma(sample.data).values)
        except NoInkError:
            refused += 1
    assert refused >= 18, f"only {refused} of 20 empty pages refused"


def test_dark_ink_on_a_page_half_in_shadow(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Grey paper whose median is below mid-grey because half the page lies in shadow: the lit
    half is paper, not light ink on dark paper, so the dark digit is the ink."""
    digits, _ = mnist_test_sample
    for digit in digits[:10]:
        page = _lit_page(digit, gradient=10.0, shadow=0.0) * 0.8  # paper about 136
        page[:, :170] *= 0.7  # the left half in shadow: most of the page below mid-grey
        ink = find_ink(page)
        cols = np.flatnonzero(ink.strength.any(axis=0))
        truth_cols = np.flatnonzero(np.kron(digit, np.ones((4, 4))).any(axis=0)) + 100
        assert abs(cols[0] - truth_cols[0]) <= 4 and abs(cols[-1] - truth_cols[-1]) <= 4


def test_a_faint_mark_on_a_clean_drawing_is_not_ink(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """On a noiseless drawing the hysteresis is skipped, yet a piece still needs a clearly dark
    pixel: a faint smudge beside the digit is left out, the digit's soft edges are kept."""
    digits, _ = mnist_test_sample
    page = np.zeros((200, 280), np.float32)
    page[40:152, 40:152] = np.kron(digits[0], np.ones((4, 4))).astype(np.float32)
    page[60:100, 200:240] = 30.0  # a faint smudge, far from the digit
    ink = find_ink(page)
    assert len(ink.boxes) == 1
    x, _, w, _ = ink.boxes[0]
    assert x + w <= 152
    edge = (page > 0) & (page < ink.core)  # the digit's anti-aliased edge pixels
    assert ink.strength[40:152, 40:152][edge[40:152, 40:152]].any()


@pytest.mark.parametrize("shape", [(280, 280), (201, 153), (48, 40)])
def test_clean_image_is_thresholded_on_its_ink_rectangle_as_on_the_whole(shape: tuple[int, int]) -> None:
    """A clean image's contrast is computed on the rectangle around its ink only; the
    threshold (Otsu's, of every other pixel of the image, or every pixel of a small one) is
    exactly the one of the whole image's contrast, wherever the rectangle starts (odd or even
    rows and columns), and so are the pieces."""
    from service.imaging import ink as ink_module

    rng = np.random.default_rng(0)
    for _ in range(20):
        image = np.zeros(shape, np.float32)
        top, left = int(rng.integers(1, shape[0] // 2)), int(rng.integers(1, shape[1] // 2))
        height, width = int(rng.integers(3, shape[0] - top)), int(rng.integers(3, shape[1] - left))
        image[top : top + height, left : left + width] = rng.uniform(0, 255, (height, width)) * (
            rng.random((height, width)) < 0.3
        )  # specks and faint pixels, and blobs of ink: some kept, some dropped
        for _ in range(3):
            row, col = top + int(rng.integers(height)), left + int(rng.integers(width))
            image[row : min(row + 12, top + height), col : min(col + 9, left + width)] = rng.uniform(30, 255)
        found = ink_module._clean_contrast(Luma(image))
        assert found is not None
        contrast, origin = found
        # Handed as the rectangle around the ink on a margin of paper (as a drawing pad's decoding
        # hands it), the image gives the same contrast at the same place.
        rectangle = Luma(image[top : top + height, left : left + width].copy(), 1.0, (top, left), shape, 0.0)
        again = ink_module._clean_contrast(rectangle)
        assert again is not None and again[1] == origin
        np.testing.assert_array_equal(again[0], contrast)
        whole = np.zeros(shape, np.float32)
        whole[origin[0] : origin[0] + contrast.shape[0], origin[1] : origin[1] + contrast.shape[1]] = contrast
        np.testing.assert_array_equal(whole, image)  # white ink on black: the contrast is the image
        small = min(shape) < 64
        assert ink_module._thresholds(contrast, shape, origin, small, True) == ink_module._thresholds(
            whole, shape, (0, 0), small, True
        )
        windowed = ink_module._pieces(contrast, shape, origin, small, clean=True)
        reference = ink_module._pieces(whole, shape, (0, 0), small, clean=True)
        for field in ("strength", "labels", "boxes", "areas"):
            np.testing.assert_array_equal(getattr(windowed, field), getattr(reference, field))
        assert windowed.core == reference.core


def _inks_equal(a: ink.Ink, b: ink.Ink) -> None:
    for field in ("strength", "labels", "boxes", "areas"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.core == b.core


def test_a_drawing_pads_ink_is_found_on_its_strokes_rectangle_as_on_the_whole_pad(
    mnist_test_sample: tuple[np.ndarray, np.ndarray],
) -> None:
    """A transparent drawing pad decodes to the rectangle around its strokes on a margin of
    background, and its ink is exactly the ink of the whole pad written out: on generated
    canvases (one and two pieces), on strokes that reach the pad's top-left corner, and on an
    empty pad (no ink either way)."""
    from PIL import Image

    digits, labels = mnist_test_sample
    uploads = [s.data for s in handwriting.canvases(digits, labels, 24, seed=31)]
    uploads += [s.data for s in handwriting.canvases(digits, labels, 8, seed=32, lifted=True)]
    corner = np.zeros((120, 120, 4), np.uint8)
    corner[0:40, 0:8, 3] = 255  # a stroke from the corner down the left edge...
    corner[30:90, 40:52, 3] = 255  # ...and one in the middle
    rectangles = 0
    for data in [*uploads, _png(Image.fromarray(corner, "RGBA"))]:
        luma = decode_luma(data)
        rectangles += not luma.whole
        _inks_equal(find_ink(luma), find_ink(luma.values))
    assert rectangles >= len(uploads) // 3  # the transparent ones (the rest are white on black)
    with pytest.raises(NoInkError):
        find_ink(decode_luma(_png(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))))


def _png(image: object) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, "PNG")  # type: ignore[attr-defined]
    return out.getvalue()


def test_flat_image_has_no_ink() -> None:
    for level in (0.0, 128.0, 255.0):
        with pytest.raises(NoInkError):
            find_ink(np.full((80, 80), level, np.float32))


def test_the_median_is_numpys() -> None:
    """ink's own median (no NaN check: its values are finite) gives np.median's value, odd and even
    counts, whole numbers (ties) and fractions, contiguous or strided."""
    rng = np.random.default_rng(7)
    for size in (1, 2, 3, 4, 99, 100, 9600):
        values = (rng.random(size * 2) * 255).astype(np.float32)
        for sample in (values[:size], values[::2], np.round(values[:size])):
            assert ink._median(sample) == float(np.median(sample)), size
    image = rng.integers(0, 256, (61, 83)).astype(np.float32)
    assert ink._median(image[::4, 1::2]) == float(np.median(image[::4, 1::2]))
