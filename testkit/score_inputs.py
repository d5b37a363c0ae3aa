"""Inputs of every kind `digits score` reads, built the same way each time from the real MNIST sample.

Used by the output-stability test (``tests/test_score_outputs.py``, against the outputs recorded in
``tests/data/score-golden/``) and by the engine comparison (``tests/test_score_ray.py``). Paths are
relative to the folder they are built in, so the outputs that name them do not depend on where it is.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from core.idx import write_idx
from core.kaggle import write_kaggle_csv

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "score-golden"
IDX_COUNT = 200
CSV_ROWS = 150
FOLDER_FILES = 40
PHOTOS = 3

# name -> the `digits score` arguments (relative to the inputs' folder) whose output is recorded there
RUNS: dict[str, tuple[str, ...]] = {
    "idx-gz-labels.csv": ("t10k-images.gz", "--labels", "t10k-labels.gz"),
    "idx-gz-labels.jsonl": ("t10k-images.gz", "--labels", "t10k-labels.gz", "--format", "jsonl"),
    "idx-raw.kaggle.csv": ("t10k-images", "--format", "kaggle"),
    "kaggle-test.kaggle.csv": ("test.csv", "--format", "kaggle"),
    "kaggle-test.csv": ("test.csv",),
    "kaggle-train.jsonl": ("train.csv", "--format", "jsonl"),
    "folder.csv": ("digits", "--folder-labels"),
    "folder.jsonl": ("digits", "--format", "jsonl"),
    "folder.kaggle.csv": ("digits", "--format", "kaggle"),
    "mixed.csv": ("test.csv", "digits", "t10k-images.gz", "--labels", "t10k-labels.gz"),
}


def photo(image: np.ndarray, seed: int) -> Image.Image:
    """A 640x480 'photo' of a digit on grey-ish paper: a large image whose decode cost is a real photo's."""
    rng = np.random.default_rng(seed)
    paper = rng.normal(215, 6, (480, 640)).clip(0, 255).astype(np.uint8)
    ink = np.asarray(Image.fromarray(image).resize((224, 224), Image.Resampling.BICUBIC), np.float32)
    paper[120:344, 200:424] = np.minimum(paper[120:344, 200:424], 255 - ink).astype(np.uint8)
    return Image.fromarray(np.stack([paper] * 3, axis=-1))


def build_inputs(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write every input kind under ``root`` from MNIST-style uint8 [N, 28, 28] images and their labels."""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "t10k-images", images[:IDX_COUNT])
    (root / "t10k-images.gz").write_bytes(gzip.compress((root / "t10k-images").read_bytes(), mtime=0))
    write_idx(root / "t10k-labels.gz", labels[:IDX_COUNT])

    write_kaggle_csv(root / "test.csv", images[:CSV_ROWS])
    lines = (root / "test.csv").read_text().splitlines(keepends=True)
    lines[3] = "1,2,3\n"  # line 4: too few columns
    lines[7] = lines[7].replace("0,", "zero,", 1)  # line 8: not an integer
    (root / "test.csv").write_text("".join(lines))
    write_kaggle_csv(root / "train.csv", images[:CSV_ROWS], labels[:CSV_ROWS])

    folder = root / "digits"
    for i in range(FOLDER_FILES):
        image = images[IDX_COUNT + i]
        sub = folder / str(int(labels[IDX_COUNT + i])) / ("scans" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(255 - image if i % 2 else image)
        if i % 5 == 0:
            picture = picture.resize((84, 84), Image.Resampling.BICUBIC)
        picture.save(sub / f"{i:03d}.png")
    for i in range(PHOTOS):
        sub = folder / str(int(labels[IDX_COUNT + FOLDER_FILES + i])) / "photos"
        sub.mkdir(parents=True, exist_ok=True)
        photo(images[IDX_COUNT + FOLDER_FILES + i], seed=i).save(sub / f"photo{i}.png")
    (folder / "notes.png").write_text("this is not an image")
    good = next(folder.rglob("*.png")).read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("L", (40, 40), 255).save(folder / "blank.png")
