"""The model contract, stated once: what every exported model takes and returns.

Training exports to it, the service checks each model file against it and speaks it over HTTP
(``/predict`` and the KServe v2 routes), and the clients send data in its shape.
"""

from __future__ import annotations

from typing import Any

INPUT_NAME = "pixels"  # the one graph input
IMAGE_SIDE = 28
IMAGE_SHAPE: tuple[int, int, int] = (1, IMAGE_SIDE, IMAGE_SIDE)  # one image: channel, height, width
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE  # 784
PIXEL_RANGE: tuple[int, int] = (0, 255)  # raw pixels, white ink on black as in MNIST
OUTPUT_NAMES: tuple[str, str] = ("logits", "probabilities")  # both float32 [N, C]

# The digit classes; Fashion-MNIST models carry their own labels in their metadata.
DIGIT_LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(10))

# MNIST training-set pixel mean and standard deviation on the 0..1 scale. The first layer of
# every network applies (x / 255 - mean) / std, so the exported graph carries its normalisation.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# KServe v2 binary tensor extension: the byte length of the JSON part that precedes raw tensor bytes.
V2_HEADER_LENGTH = "Inference-Header-Content-Length"

# The input as recorded in ONNX metadata and models/manifest.json.
INPUT_SPEC: dict[str, Any] = {
    "name": INPUT_NAME,
    "dtype": "float32",
    "shape": ["N", *IMAGE_SHAPE],
    "range": list(PIXEL_RANGE),
    "polarity": "white ink on black (MNIST)",
    "normalisation": "inside the graph",
}
