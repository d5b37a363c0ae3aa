"""The Kaggle digit-recognizer CSV reader and writers (core/kaggle.py), on the real MNIST sample."""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from core import kaggle
from core.files import DataError
from core.kaggle import (
    CsvFormatError,
    KaggleChunk,
    RowError,
    iter_kaggle_csv,
    read_kaggle_csv,
    write_kaggle_csv,
    write_kaggle_submission,
)
from testkit.data import load_mnist, load_sample

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"
TRAIN_HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
TEST_HEADER = ",".join(f"pixel{i}" for i in range(784))


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    """The first 2,000 real MNIST training images and labels."""
    return load_sample("train")


def csv_line(label: int | None, image: np.ndarray) -> str:
    """One row written by plain Python: the reference the fast writer and reader are held to."""
    values = [str(v) for v in image.reshape(-1).tolist()]
    return ",".join(values if label is None else [str(label), *values])


def train_lines(images: np.ndarray, labels: np.ndarray) -> list[str]:
    return [TRAIN_HEADER] + [csv_line(int(y), x) for x, y in zip(images, labels, strict=True)]


def write_lines(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return path


def read_all(path: Path, **kwargs: object) -> KaggleChunk:
    chunks = list(iter_kaggle_csv(path, **kwargs))  # type: ignore[arg-type]
    labels = [c.labels for c in chunks]
    return KaggleChunk(
        np.concatenate([c.images for c in chunks]),
        None if labels[0] is None else np.concatenate(labels),  # type: ignore[arg-type]
        np.concatenate([c.lines for c in chunks]),
        [e for c in chunks for e in c.errors],
    )


# --------------------------------------------------------------------------- round trips


def test_train_csv_round_trip(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, images, labels)
    assert path.read_text().splitlines()[:3] == train_lines(images[:2], labels[:2])
    table = read_kaggle_csv(path)
    assert table.images.dtype == np.uint8 and table.images.shape == (2000, 28, 28)
    assert table.labels is not None and table.labels.dtype == np.uint8
    np.testing.assert_array_equal(table.images, images)
    np.testing.assert_array_equal(table.labels, labels)
    np.testing.assert_array_equal(table.lines, np.arange(2, 2002))
    assert table.lines.dtype == np.int64
    assert table.errors == []


def test_test_csv_round_trip_has_no_labels(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images = sample[0][:300]
    path = tmp_path / "test.csv"
    write_kaggle_csv(path, images.reshape(300, 784))  # the flat form is accepted too
    lines = path.read_text().splitlines()
    assert lines[0] == TEST_HEADER
    assert lines[1] == csv_line(None, images[0])
    table = read_kaggle_csv(path)
    assert table.labels is None
    np.testing.assert_array_equal(table.images, images)


def test_writer_output_equals_plain_python_formatting(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = sample[0][:50], sample[1][:50]
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, images, labels)
    assert path.read_bytes() == ("\n".join(train_lines(images, labels)) + "\n").encode()
    assert os.listdir(tmp_path) == ["train.csv"]


def test_writer_rejects_bad_shapes_and_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\) or \(N, 784\), got \(2, 28\)"):
        write_kaggle_csv(tmp_path / "a.csv", np.zeros((2, 28), np.uint8))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        write_kaggle_csv(tmp_path / "a.csv", np.zeros((2, 784), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="labels must be in 0-9, found values from 0 to 10"):
        write_kaggle_csv(tmp_path / "a.csv", np.zeros((2, 784), np.uint8), np.array([0, 10]))
    with pytest.raises(ValueError, match="pixel values must be in 0-255, found values from -1 to -1"):
        write_kaggle_csv(tmp_path / "a.csv", np.full((1, 784), -1))
    with pytest.raises(ValueError, match="pixel values must be integers 0-255, got dtype float32"):
        write_kaggle_csv(tmp_path / "a.csv", np.zeros((1, 784), np.float32))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad rows


def bad_rows_file(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], newline: str = "\n") -> Path:
    """20 real rows (lines 2-21) with some replaced by each kind of mistake."""
    images, labels = sample[0][:20], sample[1][:20]
    lines = train_lines(images, labels)
    cells = [line.split(",") for line in lines]
    lines[3] = ",".join(cells[3][:-1])  # a pixel missing
    lines[5] = ",".join([*cells[5][:13], "abc", *cells[5][14:]])  # pixel12
    lines[7] = ",".join([*cells[7][:6], "300", *cells[7][7:]])  # pixel5
    lines[9] = ",".join([*cells[9][:1], "-1", *cells[9][2:]])  # pixel0
    lines[11] = ",".join(["10", *cells[11][1:]])  # label
    lines[13] = ",".join([*cells[13][:101], "", *cells[13][102:]])  # pixel100 empty
    lines[15] = ""  # a blank line before more data
    lines[17] = ",".join([*cells[17][:201], "1.5", *cells[17][202:]])  # pixel200
    lines[19] = ",".join([*cells[19], "0"])  # one column too many
    return write_lines(tmp_path / "train.csv", lines, newline)


EXPECTED_ERRORS = [
    RowError(4, "expected 785 columns, found 784"),
    RowError(6, "column pixel12: 'abc' is not an integer"),
    RowError(8, "column pixel5: pixel 300 is outside 0-255"),
    RowError(10, "column pixel0: pixel -1 is outside 0-255"),
    RowError(12, "column label: label 10 is outside 0-9"),
    RowError(14, "column pixel100: '' is not an integer"),
    RowError(16, "expected 785 columns, found an empty line"),
    RowError(18, "column pixel200: '1.5' is not an integer"),
    RowError(20, "expected 785 columns, found 786"),
]
BAD_LINES = [error.line for error in EXPECTED_ERRORS]


def test_each_bad_row_is_reported_with_its_line_and_reason(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]
) -> None:
    table = read_kaggle_csv(bad_rows_file(tmp_path, sample), strict=False)
    assert table.errors == EXPECTED_ERRORS
    good_lines = [line for line in range(2, 22) if line not in BAD_LINES]
    assert table.lines.tolist() == good_lines
    rows = np.array(good_lines) - 2
    np.testing.assert_array_equal(table.images, sample[0][rows])
    np.testing.assert_array_equal(table.labels, sample[1][rows])


def test_strict_read_lists_every_bad_row(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    path = bad_rows_file(tmp_path, sample)
    with pytest.raises(CsvFormatError) as info:
        read_kaggle_csv(path)
    assert info.value.errors == EXPECTED_ERRORS
    assert info.value.path == path
    message = str(info.value)
    assert message.startswith(f"{path}: 9 bad rows:\n  line 4: expected 785 columns, found 784\n")
    for error in EXPECTED_ERRORS:
        assert f"  line {error.line}: {error.reason}\n" in message
    assert "strict=False" in message


def test_strict_iteration_stops_at_the_first_bad_row(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]
) -> None:
    chunks = iter_kaggle_csv(bad_rows_file(tmp_path, sample), chunk_rows=1, strict=True)
    with pytest.raises(CsvFormatError) as info:
        list(chunks)
    assert info.value.errors == [EXPECTED_ERRORS[0]]
    assert (
        str(info.value).splitlines()[0]
        == f"{tmp_path / 'train.csv'}: line 4: expected 785 columns, found 784"
    )


def test_long_error_lists_are_cut_after_twenty(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    lines = [TRAIN_HEADER] + ["1,2,3"] * 25
    with pytest.raises(CsvFormatError) as info:
        read_kaggle_csv(write_lines(tmp_path / "train.csv", lines))
    message = str(info.value)
    assert "25 bad rows" in message
    assert "  line 21: expected 785 columns, found 3\n" in message
    assert "line 22:" not in message
    assert "  ... and 5 more\n" in message
    assert len(info.value.errors) == 25


def test_valid_but_unusual_values_are_accepted(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample[0][:3], sample[1][:3]
    lines = train_lines(images, labels)
    cells = lines[2].split(",")
    cells[0], cells[1], cells[2] = f" {cells[0]} ", "007", "+0"  # spaces, leading zeros, a sign
    lines[2] = ",".join(cells)
    expected = images.copy()
    expected[1, 0, 0], expected[1, 0, 1] = 7, 0
    table = read_kaggle_csv(write_lines(tmp_path / "train.csv", lines))
    np.testing.assert_array_equal(table.images, expected)
    np.testing.assert_array_equal(table.labels, labels)


def test_errors_survive_pickling(tmp_path: Path) -> None:
    error = CsvFormatError(tmp_path / "a.csv", [RowError(3, "bad")], "do this")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.errors, copy.hint, str(copy)) == (error.path, error.errors, "do this", str(error))


# --------------------------------------------------------------------------- header


def test_wrong_header_names_the_file_what_was_found_and_what_is_expected(tmp_path: Path) -> None:
    header = TRAIN_HEADER.replace("pixel5,", "pixel 5,")
    path = write_lines(tmp_path / "train.csv", [header, "0," + ",".join(["0"] * 784)])
    with pytest.raises(CsvFormatError) as info:
        read_kaggle_csv(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 1: not a Kaggle digit-recognizer header: ")
    assert "column 7 is 'pixel 5', expected 'pixel5'" in message
    assert "'label,pixel0,...,pixel783'" in message and "'pixel0,...,pixel783'" in message
    assert info.value.errors[0].line == 1


def test_missing_header_is_recognised(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "train.csv", ["5," + ",".join(["0"] * 784)])
    with pytest.raises(
        CsvFormatError, match=r"column 1 is '5', expected 'pixel0' \(the file seems to have no header row\)"
    ):
        read_kaggle_csv(path)


def test_truncated_header_says_how_many_columns(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "test.csv", [TEST_HEADER.rsplit(",", 1)[0]])
    with pytest.raises(CsvFormatError, match="found 783 columns, expected 784"):
        read_kaggle_csv(path)


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(CsvFormatError, match="line 1: the file is empty, expected a header line"):
        read_kaggle_csv(tmp_path / "empty.csv")
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_kaggle_csv(tmp_path / "nope.csv")


def test_a_binary_file_without_line_breaks_is_refused_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle, "_MAX_LINE_BYTES", 1000)
    (tmp_path / "blob.csv").write_bytes(bytes(range(1, 10)) * 500)
    with pytest.raises(
        CsvFormatError, match="no line break in the first 1,000 bytes; this is not a CSV file"
    ):
        read_kaggle_csv(tmp_path / "blob.csv")


def test_bom_crlf_and_missing_final_newline_are_tolerated(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = sample[0][:30], sample[1][:30]
    lines = train_lines(images, labels)
    path = tmp_path / "train.csv"
    path.write_bytes(codecs.BOM_UTF8 + "\r\n".join(lines).encode())  # CRLF, no newline at the end
    table = read_kaggle_csv(path)
    np.testing.assert_array_equal(table.images, images)
    np.testing.assert_array_equal(table.labels, labels)
    np.testing.assert_array_equal(table.lines, np.arange(2, 32))


def test_crlf_file_reports_the_same_errors(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    table = read_kaggle_csv(bad_rows_file(tmp_path, sample, newline="\r\n"), strict=False)
    assert table.errors == EXPECTED_ERRORS


def test_blank_lines_at_the_end_are_ignored(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray]) -> None:
    lines = [*train_lines(sample[0][:5], sample[1][:5]), "", "  ", ""]
    table = read_kaggle_csv(write_lines(tmp_path / "train.csv", lines))
    assert len(table) == 5 and table.errors == []


def test_header_only_file_gives_one_empty_chunk(tmp_path: Path) -> None:
    chunks = list(iter_kaggle_csv(write_lines(tmp_path / "test.csv", [TEST_HEADER])))
    assert len(chunks) == 1
    assert chunks[0].images.shape == (0, 28, 28) and chunks[0].labels is None and chunks[0].errors == []
    table = read_kaggle_csv(write_lines(tmp_path / "train.csv", [TRAIN_HEADER]))
    assert table.images.shape == (0, 28, 28) and table.labels is not None and table.labels.shape == (0,)


# --------------------------------------------------------------------------- chunks and blocks


@pytest.mark.parametrize("chunk_rows", [1, 7, 500, 100_000])
def test_chunks_have_the_requested_size_and_add_up(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], chunk_rows: int
) -> None:
    images, labels = sample
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, images, labels)
    chunks = list(iter_kaggle_csv(path, chunk_rows=chunk_rows))
    assert [len(c) for c in chunks[:-1]] == [chunk_rows] * (len(chunks) - 1)
    assert 1 <= len(chunks[-1]) <= chunk_rows
    whole = read_all(path, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(whole.images, images)
    np.testing.assert_array_equal(whole.labels, labels)
    np.testing.assert_array_equal(whole.lines, np.arange(2, 2002))


@pytest.mark.parametrize("block_bytes", [1, 4096, 10_000])
@pytest.mark.parametrize("chunk_rows", [1, 3, 8192])
def test_results_do_not_depend_on_read_blocks_or_chunks(
    tmp_path: Path,
    sample: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    block_bytes: int,
    chunk_rows: int,
) -> None:
    path = bad_rows_file(tmp_path, sample, newline="\r\n")
    reference = read_kaggle_csv(path, strict=False)
    monkeypatch.setattr(kaggle, "_BLOCK_BYTES", block_bytes)  # rows cut across reads
    chunks = list(iter_kaggle_csv(path, chunk_rows=chunk_rows))
    # A chunk's errors lie after the previous chunk's rows and before the next chunk's rows.
    for before, chunk, after in zip([None, *chunks[:-1]], chunks, [*chunks[1:], None], strict=True):
        low = before.lines[-1] if before is not None else 1
        high = after.lines[0] if after is not None else 10**9
        assert all(low < error.line < high for error in chunk.errors)
    whole = read_all(path, chunk_rows=chunk_rows)
    assert whole.errors == reference.errors == EXPECTED_ERRORS
    np.testing.assert_array_equal(whole.lines, reference.lines)
    np.testing.assert_array_equal(whole.images, reference.images)
    np.testing.assert_array_equal(whole.labels, reference.labels)


def test_an_overlong_line_is_skipped_without_being_held(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kaggle, "_MAX_LINE_BYTES", 8000)
    monkeypatch.setattr(kaggle, "_BLOCK_BYTES", 4000)
    lines = train_lines(sample[0][:4], sample[1][:4])
    lines.insert(2, ",".join(["1"] * 20_000))  # 40 kB: becomes line 3
    table = read_kaggle_csv(write_lines(tmp_path / "train.csv", lines), strict=False)
    assert table.errors == [RowError(3, "expected 785 columns, found 20000")]
    assert table.lines.tolist() == [2, 4, 5, 6]
    np.testing.assert_array_equal(table.images, sample[0][:4])


def test_iter_rejects_a_bad_chunk_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows must be at least 1, got 0"):
        next(iter_kaggle_csv(tmp_path / "train.csv", chunk_rows=0))


# --------------------------------------------------------------------------- submission


def test_submission_is_written_to_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    write_kaggle_submission(path, np.array([7, 2, 1], dtype=np.int64))
    assert path.read_bytes() == b"ImageId,Label\n1,7\n2,2\n3,1\n"
    write_kaggle_submission(path, iter([0, 9]), start_id=28001)
    assert path.read_bytes() == b"ImageId,Label\n28001,0\n28002,9\n"
    assert os.listdir(tmp_path) == ["submission.csv"]


def test_submission_refuses_non_integers(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"prediction 1 is 2\.5; expected an integer class index"):
        write_kaggle_submission(tmp_path / "submission.csv", [1, 2.5])
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- the full data (CI)


@pytest.mark.full_data
def test_full_size_train_csv_round_trip(tmp_path: Path, full_mnist_dir: Path) -> None:
    images, labels = load_mnist(full_mnist_dir, "train")
    images, labels = images[:42000], labels[:42000]  # the size of the competition's train.csv
    path = tmp_path / "train.csv"
    write_kaggle_csv(path, images, labels)
    table = read_kaggle_csv(path)
    np.testing.assert_array_equal(table.images, images)
    np.testing.assert_array_equal(table.labels, labels)
    assert table.lines[-1] == 42001


# --------------------------------------------------------------------------- fast path against slow path

MUTATIONS = [
    "007", "0000", "1234", "99999", "65636", "256", "999", "1000", " 5", "5 ", "+5", "-0", "",
    "1.0", "1e2", "\t7", "x", "0x1F", "١", "12\r3",
]  # fmt: skip


def mutated_file(tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = train_lines(sample[0][:300], sample[1][:300])
    for row in rng.choice(np.arange(1, len(lines)), size=120, replace=False):
        cells = lines[row].split(",")
        kind = rng.integers(0, 6)
        if kind == 0:  # drop or add a column
            cells = cells[:-1] if rng.integers(0, 2) else [*cells, "0"]
        elif kind == 1:  # a blank or whitespace line
            cells = [rng.choice(["", "   "])]
        else:  # one to three odd values anywhere, the label included
            for column in rng.integers(0, len(cells), size=rng.integers(1, 4)):
                cells[column] = str(rng.choice(MUTATIONS))
        lines[row] = ",".join(cells)
    return write_lines(tmp_path / "train.csv", lines)


@pytest.mark.parametrize("seed", range(5))
def test_fast_path_agrees_with_the_line_by_line_reader(
    tmp_path: Path, sample: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    path = mutated_file(tmp_path, sample, seed)
    fast = read_kaggle_csv(path, strict=False)
    assert 0 < len(fast.errors) < 120 and len(fast) > 180  # both paths really exercised
    monkeypatch.setattr(kaggle, "_parse_rows_fast", lambda *args: None)  # every line goes the slow way
    slow = read_kaggle_csv(path, strict=False)
    assert fast.errors == slow.errors
    np.testing.assert_array_equal(fast.lines, slow.lines)
    np.testing.assert_array_equal(fast.images, slow.images)
    np.testing.assert_array_equal(fast.labels, slow.labels)
