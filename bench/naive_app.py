"""The naive peer: what a fifteen-line FastAPI + ONNX Runtime MNIST server does, for the benchmark to beat.

* ``POST /predict`` takes ``{"pixels": 28x28}`` and runs the model inline in the handler, on the event loop;
* ``POST /upload`` takes an ``UploadFile``, converts it to grey, resizes it to 28x28 and inverts it when the
  paper is light — no cropping, no 20x20 fit, no centring: the MNIST recipe skipped, as most demos do.

`bench/bench_service.py --configs naive` runs it beside the service in the same interleaved run.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, UploadFile
from PIL import Image

MODEL = Path(__file__).resolve().parents[1] / "models" / "lenet5.onnx"

app = FastAPI()
session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])


def naive_pixels(data: bytes) -> np.ndarray:
    """Any image file -> float32 [1,1,28,28] the naive way: grey, squashed to 28x28, inverted if light."""
    image = Image.open(io.BytesIO(data))
    if image.mode in ("RGBA", "LA"):  # a canvas PNG: transparent paper, so composite onto white
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    x = np.asarray(image.convert("L").resize((28, 28)), np.float32)
    if x.mean() > 127:
        x = 255 - x
    return x.reshape(1, 1, 28, 28)


def _answer(x: np.ndarray) -> dict[str, object]:
    probabilities = session.run(["probabilities"], {"pixels": x})[0][0]
    return {"digit": int(probabilities.argmax()), "probabilities": probabilities.tolist()}


@app.post("/predict")
async def predict(body: dict[str, list[list[float]]]) -> dict[str, object]:
    return _answer(np.asarray(body["pixels"], np.float32).reshape(1, 1, 28, 28))


@app.post("/upload")
async def upload(file: UploadFile) -> dict[str, object]:
    return _answer(naive_pixels(await file.read()))
