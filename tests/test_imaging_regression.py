"""The new imaging against the one it replaced, on canvas drawings and scans (which it read
well): the shipped model must read generated canvas-style and scan-style digits at least as
well through service/imaging as through the old algorithm, kept below as the reference.

The reference is the previous preprocessing written plainly, every step on the whole image
(paper tone and noise from a border ring, polarity by headroom and mass, a global threshold
at the larger of 10 % of the peak and 5 sigma of the paper's noise, isolated pixels dropped),
then the same MNIST recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.imaging import NoInkError, decode_image, preprocess_image_bytes, to_mnist
from testkit import handwriting

COUNT = 150


def _old_preprocess(data: bytes) -> np.ndarray:
    gray = _old_gray(decode_image(data))
    if not gray.any():
        raise NoInkError("no ink")
    return to_mnist(gray)


def _old_gray(image: Image.Image) -> np.ndarray:
    """Yesterday's to_grayscale: float32 [H,W], ink 0..255, background 0."""
    return _old_ink(_old_luma(image))


def _old_luma(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image).astype(np.float32)
        if image.mode == "F":
            np.nan_to_num(values, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            peak = float(values.max(initial=0.0))
            scale = 255.0 if peak <= 1.0 else (1.0 if peak <= 255.0 else 255.0 / peak)
            return np.clip(values, 0.0, None) * np.float32(scale)
        if image.mode == "I" and float(values.max(initial=0.0)) <= 255.0:
            return np.clip(values, 0.0, 255.0)
        return np.clip(values, 0.0, 65535.0) * np.float32(255.0 / 65535.0)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _old_composite(image)
    if image.mode == "LAB":
        return np.asarray(image.getchannel("L"), dtype=np.float32)
    try:
        gray = image.convert("L")
    except ValueError:
        gray = image.convert("RGBA").convert("L")
    return np.asarray(gray, dtype=np.float32)


def _lower_median(values: np.ndarray) -> float:
    cumulative = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(cumulative, (cumulative[-1] + 1) // 2))


def _old_composite(image: Image.Image) -> np.ndarray:
    if image.mode not in ("RGBA", "LA"):
        image = image.convert("RGBA")
    luma = np.asarray(image.convert("L"))
    alpha = np.asarray(image.getchannel("A"))
    coverage = float(alpha.mean()) / 255.0
    if coverage >= 1.0:
        return luma.astype(np.float32)
    if coverage <= 0.0:
        return np.zeros(luma.shape, dtype=np.float32)
    opaque = alpha >= 128
    if coverage >= 0.5:
        background = _lower_median(luma[opaque])
    else:
        strokes = luma[opaque] if opaque.any() else luma[alpha > 0]
        hidden = luma[alpha == 0]
        under = _lower_median(hidden) if hidden.size else None
        if under is not None and np.percentile(np.abs(strokes - np.float32(under)), 90) >= 64.0:
            background = under
        else:
            background = 255.0 if float(strokes.mean()) < 127.5 else 0.0
    weight = alpha.astype(np.float32) * np.float32(1 / 255)
    return np.float32(background) + weight * (luma - np.float32(background))


def _old_ink(luma: np.ndarray) -> np.ndarray:
    height, width = luma.shape
    ring = max(1, round(min(height, width) / 32))
    strips = (luma[:ring], luma[-ring:], luma[:, :ring], luma[:, -ring:])
    border = np.concatenate([strip.ravel() for strip in strips])
    background = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    ink = luma - np.float32(background)
    lightest, darkest = float(ink.max()), -float(ink.min())
    floor = 0.25 * max(lightest, darkest)

    def mass(values: np.ndarray) -> float:
        strong = values[values > floor]
        return float(strong.sum()) - floor * strong.size

    if darkest > lightest:
        dark_ink = lightest < floor or mass(-ink) > mass(ink)
    else:
        dark_ink = darkest >= floor and mass(-ink) > mass(ink)
    if dark_ink:
        np.negative(ink, out=ink)
    np.maximum(ink, 0.0, out=ink)
    peak = max(darkest if dark_ink else lightest, 0.0)
    threshold = max(0.1 * peak, 5.0 * noise)
    if peak < 16.0 or peak < 2.0 * threshold:
        return np.zeros_like(luma)
    ink[ink < threshold] = 0.0
    inked = np.pad(ink > 0.0, 1)
    neighbours = sum(
        np.roll(inked, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
    )[1:-1, 1:-1]
    ink[neighbours == 0] = 0.0  # specks: ink with no ink around it
    ink *= np.float32(255.0 / peak)
    return ink


def _accuracy(samples: Iterator[handwriting.Sample], preprocess: Callable[[bytes], np.ndarray],
              session: ort.InferenceSession) -> float:
    inputs, labels = [], []
    for sample in samples:
        labels.append(int(sample.text))
        try:
            inputs.append(preprocess(sample.data))
        except NoInkError:
            inputs.append(np.zeros((28, 28), np.float32))  # refused: counts as wrong
    (probabilities,) = session.run(["probabilities"], {"pixels": np.stack(inputs)[:, None].astype(np.float32)})
    right = (probabilities.argmax(axis=1) == np.array(labels)) & np.stack(inputs).any(axis=(1, 2))
    return float(right.mean())


@pytest.fixture(scope="module")
def session(models_dir: object) -> ort.InferenceSession:
    return ort.InferenceSession(str(models_dir) + "/lenet5.onnx", providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", ["canvases", "scans"])
def test_not_worse_than_the_old_algorithm(
    kind: str, mnist_test_sample: tuple[np.ndarray, np.ndarray], session: ort.InferenceSession
) -> None:
    generate = getattr(handwriting, kind)
    digits, labels = mnist_test_sample
    new = _accuracy(generate(digits, labels, COUNT, 11), preprocess_image_bytes, session)
    old = _accuracy(generate(digits, labels, COUNT, 11), _old_preprocess, session)
    assert new >= old, f"{kind}: {new:.1%} now, {old:.1%} with the old algorithm"
    assert new >= 0.9, f"{kind}: {new:.1%}"
