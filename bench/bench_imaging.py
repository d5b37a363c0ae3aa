"""Imaging benchmark: accuracy on generated handwriting and cost per image, side by side with the
preprocessing this package replaced.

    python -m bench.bench_imaging [--mnist-dir DIR] [--photos 500] [--numbers 600] [--old-rev REV]
                                  [--baseline-model ONNX]

Sets (testkit/handwriting.py, MNIST *test* digits, fixed seeds): phone-style photos through
POST /predict, photos of empty paper (must be refused), 2-6-digit numbers (half canvas, half
photo) through POST /read, canvas-style and scan-style single digits. The old algorithm is
service/preprocess.py at --old-rev, read with `git show` (it cannot read numbers). Accuracy uses
the shipped LeNet-5; --baseline-model adds, in-process, another model's accuracy on the same
photos, numbers and digits drawn with a lifted stroke (the model the shipped one replaced, say:
`git show REV:models/lenet5.onnx > old.onnx`). Numbers count as read when every digit is right
("exact"); "per digit" is the share of digits at their right place, and "digit errors" the edit
distance (digits missed, added or wrong) per digit written. Costs are single-thread medians of
preprocessing only (bytes in, model input out), old and new interleaved round by round; their
ratio is the figure to compare. Then a drawing pad's PNG decoded by libspng alone and after
ISA-L's inflate, at several sizes; last, the core operations of ink.py with OpenCV and with
scipy.ndimage (if installed) on a 640x480 photo.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from fastapi.testclient import TestClient  # noqa: E402

from service import imaging  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from testkit import handwriting  # noqa: E402
from training.download import load_split  # noqa: E402


def _old_module(rev: str) -> object:
    """service/preprocess.py as it was at `rev`, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:service/preprocess.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_preprocess.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_preprocess", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _predict_accuracy(client: TestClient, samples: list[handwriting.Sample]) -> tuple[float, int]:
    """(accuracy, refused) of single digits through POST /predict, 32 files a request."""
    right = refused = 0
    for start in range(0, len(samples), 32):
        chunk = samples[start : start + 32]
        files = [("file", (f"f{i}", s.data, "application/octet-stream")) for i, s in enumerate(chunk)]
        response = client.post("/predict", files=files)
        if response.status_code == 200:
            right += sum(p["digit"] == int(s.text) for p, s in zip(response.json()["predictions"], chunk, strict=True))
            continue
        for sample in chunk:  # one refused image fails its request: send them one by one
            one = client.post("/predict", content=sample.data, headers={"content-type": "image/*"})
            if one.status_code == 200:
                right += one.json()["predictions"][0]["digit"] == int(sample.text)
            else:
                refused += 1
    return right / len(samples), refused


def _old_accuracy(old: object, samples: list[handwriting.Sample], session: object) -> tuple[float, int]:
    inputs, refused = [], 0
    for sample in samples:
        try:
            inputs.append(old.preprocess_image_bytes(sample.data))  # type: ignore[attr-defined]
        except old.PreprocessError:  # type: ignore[attr-defined]
            inputs.append(np.zeros((28, 28), np.float32))
            refused += 1
    (probabilities,) = session.run(["probabilities"], {"pixels": np.stack(inputs)[:, None]})  # type: ignore[attr-defined]
    right = (probabilities.argmax(axis=1) == [int(s.text) for s in samples]) & np.stack(inputs).any(axis=(1, 2))
    return float(right.mean()), refused


def _refused(client: TestClient, samples: list[handwriting.Sample]) -> int:
    return sum(client.post("/predict", content=s.data, headers={"content-type": "image/jpeg"}).status_code == 422
               for s in samples)


def _old_refused(old: object, samples: list[handwriting.Sample]) -> int:
    count = 0
    for sample in samples:
        try:
            old.preprocess_image_bytes(sample.data)  # type: ignore[attr-defined]
        except old.PreprocessError:  # type: ignore[attr-defined]
            count += 1
    return count


def _http_reading(client: TestClient) -> Callable[[bytes], str]:
    def read(data: bytes) -> str:
        response = client.post("/read", content=data, headers={"content-type": "image/*"})
        return str(response.json()["readings"][0]["text"]) if response.status_code == 200 else ""

    return read


def _local_reading(session: object) -> Callable[[bytes], str]:
    def read(data: bytes) -> str:
        try:
            found = imaging.read_number_bytes(data)
        except imaging.ImagingError:
            return ""
        inputs = np.stack([d.pixels for d in found])[:, None]
        (probabilities,) = session.run(["probabilities"], {"pixels": inputs})  # type: ignore[attr-defined]
        return "".join(str(int(k)) for k in probabilities.argmax(axis=1))

    return read


def _read_accuracy(
    read: Callable[[bytes], str], samples: list[handwriting.Sample]
) -> tuple[float, float, float, dict[str, float]]:
    """(exact numbers, digits at their right place, digit errors per digit, exact by kind)."""
    exact, digits_right, errors, by_kind = 0, 0, 0, {}
    for sample in samples:
        text = read(sample.data)
        hit = text == sample.text
        exact += hit
        by_kind.setdefault(sample.kind, []).append(hit)
        if len(text) == len(sample.text):
            digits_right += sum(a == b for a, b in zip(text, sample.text, strict=True))
        errors += _edit_distance(text, sample.text)
    total_digits = sum(len(s.text) for s in samples)
    kinds = {k: float(np.mean(v)) for k, v in by_kind.items()}
    return exact / len(samples), digits_right / total_digits, errors / total_digits, kinds


def _edit_distance(a: str, b: str) -> int:
    """Digits inserted, deleted or substituted to turn `a` into `b` (Levenshtein)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _local_accuracy(session: object, samples: list[handwriting.Sample]) -> float:
    """Single digits in-process (refused ones count as wrong)."""
    right = 0
    for sample in samples:
        try:
            inputs = imaging.preprocess_image_bytes(sample.data)[None, None]
        except imaging.ImagingError:
            continue
        (probabilities,) = session.run(["probabilities"], {"pixels": inputs})  # type: ignore[attr-defined]
        right += int(probabilities.argmax()) == int(sample.text)
    return right / len(samples)


def _median_ms(functions: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms per call of each function, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def _libraries(photo: bytes, rounds: int) -> None:
    """ink.py's core operations with OpenCV and with scipy.ndimage, on one photo's luminance."""
    import cv2

    luma = imaging.decode_luma(photo).values
    height, width = luma.shape
    small = (64 * width // height, 64)

    def with_cv2() -> None:
        blurred = cv2.GaussianBlur(luma, (0, 0), 1.0)
        thumb = cv2.resize(blurred, small, interpolation=cv2.INTER_AREA)
        closed = cv2.morphologyEx(thumb, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17)))
        paper = cv2.resize(closed, (width, height), interpolation=cv2.INTER_LINEAR)
        contrast = 255.0 - cv2.divide(blurred, paper, scale=255.0)
        levels = np.clip(contrast, 0, 255).astype(np.uint8)
        _, mask = cv2.threshold(levels, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        cv2.connectedComponentsWithStats(mask, connectivity=8)
        cv2.moments(levels)

    timings = {"opencv": with_cv2}
    try:
        from scipy import ndimage
    except ImportError:
        print("scipy.ndimage: not installed (pip install scipy to compare)")
        ndimage = None
    if ndimage is not None:
        def with_scipy() -> None:
            blurred = ndimage.gaussian_filter(luma, 1.0)
            thumb = ndimage.zoom(blurred, 64 / height, order=1)
            closed = ndimage.grey_closing(thumb, size=(17, 17))
            paper = ndimage.zoom(closed, (height / closed.shape[0], width / closed.shape[1]), order=1)
            contrast = 255.0 - 255.0 * blurred / paper[:height, :width]
            levels = np.clip(contrast, 0, 255).astype(np.uint8)
            counts = np.bincount(levels.ravel(), minlength=256)  # Otsu by hand: scipy has none
            weights = np.cumsum(counts)
            means = np.cumsum(counts * np.arange(256))
            spread = np.maximum(weights * (weights[-1] - weights), 1)
            between = (means[-1] * weights - means * weights[-1]) ** 2 / spread
            mask = levels > int(np.argmax(between))
            labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
            ndimage.find_objects(labels)
            ndimage.sum_labels(mask, labels, np.arange(1, count + 1))
            ndimage.center_of_mass(levels)

        timings["scipy.ndimage"] = with_scipy
    ms = _median_ms(timings, rounds)
    print(f"ink.py core operations on a {width}x{height} photo, one thread (median of {rounds}):")
    for name, value in ms.items():
        print(f"  {name:14s} {value:6.2f} ms  ({value / ms['opencv']:.1f}x OpenCV)")


def _png_decoding(pads: list[bytes], rounds: int) -> None:
    """A drawing pad's PNG decoded by libspng through pyspng, with its image data inflated by ISA-L
    first (png.with_stored_data), and the same through libspng's C API (spng.py, the service's
    path), at the canvas's size and at other sides (the same strokes resized); then two threads
    decoding twice as many canvases, against one thread: pyspng holds the interpreter while it
    decodes, the C API lets go of it."""
    import io
    import threading

    import pyspng
    from PIL import Image

    from service.imaging import spng
    from service.imaging.png import png_header, with_stored_data

    if not spng.available():
        print("PNG decoding: this pyspng does not export libspng's functions; skipped")
        return
    print(f"PNG decoding, one thread (median of {rounds}): libspng through pyspng; after ISA-L's inflate; "
          "and after ISA-L's inflate through libspng's C API:")
    with Image.open(io.BytesIO(pads[0])) as first:
        mode = first.mode
    for side in (64, 100, 140, 200, 280, 560):
        files = []
        for data in pads:
            with Image.open(io.BytesIO(data)) as image:
                out = io.BytesIO()
                image.convert(mode).resize((side, side)).save(out, "PNG")
                files.append(out.getvalue())

        def alone(files: list[bytes] = files) -> None:
            for data in files:
                pyspng.load(data, mode)

        def stored(files: list[bytes] = files) -> None:
            for data in files:
                header = png_header(data)
                pyspng.load((with_stored_data(data, header) if header else None) or data, mode)

        def c_api(files: list[bytes] = files) -> None:
            for data in files:
                header = png_header(data)
                assert header is not None
                spng.load(with_stored_data(data, header) or data, mode, header.width, header.height)

        ms = _median_ms({"alone": alone, "stored": stored, "c_api": c_api}, rounds)
        print(f"  {side:3d}x{side:<3d} {mode:4s} pyspng {1e3 * ms['alone'] / len(files):6.0f} µs   "
              f"ISA-L + pyspng {1e3 * ms['stored'] / len(files):6.0f} µs ({ms['stored'] / ms['alone']:.2f}x)   "
              f"ISA-L + C API {1e3 * ms['c_api'] / len(files):6.0f} µs ({ms['c_api'] / ms['alone']:.2f}x)")

    def in_threads(decode: Callable[[], None], count: int) -> None:
        threads = [threading.Thread(target=decode) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    stored_pads = []
    for data in pads:
        header = png_header(data)
        assert header is not None
        stored_pads.append((with_stored_data(data, header) or data, header))
    def by_pyspng() -> None:
        for data, _ in stored_pads:
            pyspng.load(data, mode)

    def by_c_api() -> None:
        for data, header in stored_pads:
            spng.load(data, mode, header.width, header.height)

    by_binding: dict[str, Callable[[], None]] = {"pyspng": by_pyspng, "C API": by_c_api}
    print("  two threads, each decoding the canvases (stored data), against one thread decoding them once "
          f"(median of {max(3, rounds // 10)}; 2.0x: no parallelism, 1.0x: two cores' worth):")
    for name, decode in by_binding.items():
        def one(decode: Callable[[], None] = decode) -> None:
            in_threads(decode, 1)

        def two(decode: Callable[[], None] = decode) -> None:
            in_threads(decode, 2)

        ms = _median_ms({"one": one, "two": two}, max(3, rounds // 10))
        print(f"    {name:6s} {ms['two'] / ms['one']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", default=str(REPO.parent / "shared" / "data" / "mnist"),
                        help="MNIST IDX files (default: ../shared/data/mnist; else the tests/data sample)")
    parser.add_argument("--photos", type=int, default=500, help="photos of single digits (default 500)")
    parser.add_argument("--numbers", type=int, default=600, help="numbers of 2-6 digits (default 600)")
    parser.add_argument("--singles", type=int, default=300, help="canvas and scan digits each (default 300)")
    parser.add_argument("--rounds", type=int, default=200, help="timing rounds (default 200)")
    parser.add_argument("--old-rev", default="cf92c4b^", help="git revision holding service/preprocess.py "
                        "(default: the one before the imaging package)")
    parser.add_argument("--baseline-model", type=Path, default=None,
                        help="another LeNet-5 ONNX file to compare with the shipped one in-process (default: none)")
    args = parser.parse_args(argv)

    import cv2
    import onnxruntime as ort

    cv2.setNumThreads(1)
    mnist = Path(args.mnist_dir)
    if not (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        mnist = REPO / "tests" / "data" / "mnist-sample"
    digits, labels = load_split("mnist", "test", mnist, verify=False, download_missing=False)
    print(f"MNIST test digits: {len(digits)} from {mnist.name}")
    old = _old_module(args.old_rev)
    session = ort.InferenceSession(str(REPO / "models" / "lenet5.onnx"), providers=["CPUExecutionProvider"])

    photos = list(handwriting.photos(digits, labels, args.photos, seed=1))
    empty = list(handwriting.empty_photos(100, seed=2))
    numbers = list(handwriting.numbers(digits, labels, args.numbers, seed=3))
    lifted = list(handwriting.canvases(digits, labels, args.singles, seed=9, lifted=True))
    canvases = list(handwriting.canvases(digits, labels, args.singles, seed=4))
    scans = list(handwriting.scans(digits, labels, args.singles, seed=5))

    with TestClient(create_app(Settings(models_dir=REPO / "models"))) as client:
        print("\naccuracy (LeNet-5)                 new (HTTP)        old")
        for name, samples in (("photos", photos), ("canvas-style", canvases), ("scan-style", scans)):
            new, new_refused = _predict_accuracy(client, samples)
            before, old_refused = _old_accuracy(old, samples, session)
            print(f"  {name:14s} n={len(samples):4d}   {new:7.1%} ({new_refused:3d} refused)"
                  f"  {before:7.1%} ({old_refused:3d} refused)")
        print(f"  empty paper    n={len(empty):4d}   {_refused(client, empty):3d} refused"
              f"          {_old_refused(old, empty):3d} refused")
        exact, per_digit, errors, by_kind = _read_accuracy(_http_reading(client), numbers)
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in sorted(by_kind.items()))
        print(f"  numbers        n={len(numbers):4d}   exact {exact:.1%}, per digit {per_digit:.1%}, "
              f"digit errors {errors:.1%} ({kinds})")
    from bench.naive_app import naive_pixels  # the naive peer's upload recipe (bench_service.py)

    print("\nthe naive peer's uploads (grey, squashed to 28x28, inverted if light; bench/naive_app.py), in-process")
    for name, samples in (("photos", photos), ("canvas-style", canvases), ("scan-style", scans)):
        inputs = np.concatenate([naive_pixels(s.data) for s in samples])
        (probabilities,) = session.run(["probabilities"], {"pixels": inputs})
        right = float(np.mean(probabilities.argmax(axis=1) == [int(s.text) for s in samples]))
        print(f"  {name:14s} n={len(samples):4d}   {right:7.1%}")
    if args.baseline_model is not None:
        baseline = ort.InferenceSession(str(args.baseline_model), providers=["CPUExecutionProvider"])
        print(f"\nin-process, the shipped LeNet-5 and {args.baseline_model.name} (same preprocessing)")
        for name, model in (("shipped", session), ("baseline", baseline)):
            exact, per_digit, errors, _ = _read_accuracy(_local_reading(model), numbers)
            print(f"  {name:9s} photos {_local_accuracy(model, photos):6.1%}   lifted-stroke digits "
                  f"{_local_accuracy(model, lifted):6.1%}   numbers exact {exact:.1%}, per digit {per_digit:.1%}, "
                  f"digit errors {errors:.1%}")

    pads = [s for s in handwriting.canvases(digits, labels, 50, seed=6) if _size(s.data) == (280, 280)]
    canvas = pads[0]
    transparent = next(s for s in pads if _mode(s.data) == "RGBA")
    photo = _as_640x480(next(handwriting.photos(digits, labels, 1, seed=7)))
    number = next(s for s in handwriting.numbers(digits, labels, 200, seed=8)
                  if len(s.text) == 5 and s.kind == "number photo")
    number_canvas = next(s for s in handwriting.numbers(digits, labels, 200, seed=8)
                         if len(s.text) == 5 and s.kind == "number canvas")
    print(f"\npreprocessing cost, one thread, median of {args.rounds} rounds, interleaved")
    for name, sample in (("280x280 canvas PNG", canvas), ("280x280 transparent canvas PNG", transparent),
                         ("640x480 photo JPEG", photo)):
        ms = _median_ms({"new": lambda s=sample: imaging.preprocess_image_bytes(s.data),
                         "old": lambda s=sample: _try(old, s.data)}, args.rounds)
        print(f"  {name:34s} new {ms['new']:5.2f} ms   old {ms['old']:5.2f} ms   new/old {ms['new'] / ms['old']:.2f}")
    for name, sample in ((f"5-digit number photo {_size(number.data)}", number),
                         (f"5-digit number canvas {_size(number_canvas.data)}", number_canvas)):
        ms = _median_ms({"new": lambda s=sample: imaging.read_number_bytes(s.data),
                         "old": lambda s=sample: _try(old, s.data)}, args.rounds)
        print(f"  {name:34s} new {ms['new']:5.2f} ms   old (one blob) {ms['old']:5.2f} ms")
    print()
    _png_decoding([s.data for s in pads if _mode(s.data) == "RGBA"][:10], max(10, args.rounds // 10))
    print()
    _libraries(photo.data, args.rounds)
    return 0


def _try(old: object, data: bytes) -> None:
    """The old preprocessing, timed whether it reads the image or refuses it (as it does photos)."""
    with contextlib.suppress(old.PreprocessError):  # type: ignore[attr-defined]
        old.preprocess_image_bytes(data)  # type: ignore[attr-defined]


def _as_640x480(sample: handwriting.Sample) -> handwriting.Sample:
    """A generated photo re-framed to exactly 640x480 (JPEG quality 85)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(sample.data)) as image:
        image.resize((640, 480)).save(out, "JPEG", quality=85)
    return handwriting.Sample(out.getvalue(), sample.text, (), sample.kind)


def _size(data: bytes) -> tuple[int, int]:
    return _header(data)[0]


def _mode(data: bytes) -> str:
    return _header(data)[1]


def _header(data: bytes) -> tuple[tuple[int, int], str]:
    """(size, mode) of an encoded image, from its header."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size, str(image.mode)


if __name__ == "__main__":
    raise SystemExit(main())
