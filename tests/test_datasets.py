"""IDX files (core/idx.py), digests (core/files.py), the data set specs and load_split (training/download.py),
stratified_split (training/data.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from core import files
from core.files import DataError, file_digest, files_digest, verify_checksum
from core.idx import IdxFormatError, load_idx, load_idx_images, load_idx_labels, write_idx
from training import download
from training.data import stratified_split
from training.download import DATASETS, ChecksumError, default_data_dir, fetch, load_split

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file built by hand (independently of write_idx)."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# --------------------------------------------------------------------------- IDX round trips


@pytest.mark.parametrize("name", ["images.idx", "images.gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
def test_write_idx_then_load_idx_gives_the_same_array(
    tmp_path: Path, name: str, shape: tuple[int, ...]
) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, array)
    loaded = load_idx(path)
    assert loaded.dtype == np.uint8
    assert loaded.shape == shape
    np.testing.assert_array_equal(loaded, array)
    assert loaded.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_other_idx_types_round_trip_in_native_byte_order(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    write_idx(tmp_path / "a.idx", array)
    loaded = load_idx(tmp_path / "a.idx")
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, array)


def test_write_idx_matches_a_hand_built_file(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "a.idx", array)
    assert (tmp_path / "a.idx").read_bytes() == idx_bytes(array, type_code=0x0C)


def test_gzip_is_detected_by_content_not_by_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    (tmp_path / "compressed.bin").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "raw.gz").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(load_idx(tmp_path / "compressed.bin"), array)
    np.testing.assert_array_equal(load_idx(tmp_path / "raw.gz"), array)


def test_write_idx_refuses_an_unsupported_type_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"IDX has no type for int64.*astype\(np.uint8\)"):
        write_idx(tmp_path / "a.idx", np.arange(3, dtype=np.int64))
    assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "labels.gz"
    write_idx(path, np.array([1, 2, 3], dtype=np.uint8))
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_idx(path, np.array([4, 5, 6], dtype=np.uint8))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["labels.gz"]


# --------------------------------------------------------------------------- IDX errors


def test_wrong_magic_names_the_file_and_the_magic(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(IdxFormatError) as info:
        load_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "magic number 0x89504e47 is not an IDX header" in message
    assert "2051" in message and "2049" in message


def test_a_raw_file_named_gz_with_a_bad_header_says_it_is_not_compressed(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(IdxFormatError, match=r"the name ends in \.gz but the content is not gzip-compressed"):
        load_idx(path)


def test_truncated_payload_gives_expected_and_actual_bytes(tmp_path: Path) -> None:
    path = tmp_path / "images.idx"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-100])
    with pytest.raises(IdxFormatError) as info:
        load_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message
    assert "(3, 28, 28), i.e. 2,352 bytes of data, but only 2,252 bytes follow" in message
    assert "download it again" in message


def test_truncated_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "images.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 60000))
    with pytest.raises(
        IdxFormatError, match=r"truncated header: it declares 3 dimensions \(16 header bytes\)"
    ):
        load_idx(path)


def test_a_file_too_short_for_a_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.idx"
    path.write_bytes(b"\0\0")
    with pytest.raises(IdxFormatError, match=r"only 2 bytes in the file, too short for an IDX header"):
        load_idx(path)


def test_trailing_garbage_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(5, dtype=np.uint8)) + b"junk"))
    with pytest.raises(IdxFormatError) as info:
        load_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "4 unexpected bytes after the data" in message
    assert "after decompression" in message


def test_truncated_gzip_stream_is_an_idx_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    whole = (SAMPLE / "t10k-images-idx3-ubyte.gz").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IdxFormatError) as info:
        load_idx(path)
    assert str(path) in str(info.value)
    assert "the gzip stream is truncated or corrupt" in str(info.value)


def test_corrupt_gzip_stream_is_an_idx_error(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    data[20:30] = b"\xff" * 10  # inside the deflate stream
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="gzip stream is truncated or corrupt"):
        load_idx(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.gz: file not found; check the path"):
        load_idx(tmp_path / "nope.gz")


def test_images_loader_rejects_a_labels_file(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError) as info:
        load_idx_images(SAMPLE / "t10k-labels-idx1-ubyte.gz")
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "shape (1000,)" in message and "(N, 28, 28)" in message


def test_images_loader_rejects_wrong_image_size(tmp_path: Path) -> None:
    path = tmp_path / "small.idx"
    path.write_bytes(idx_bytes(np.zeros((2, 27, 28), np.uint8)))
    with pytest.raises(IdxFormatError, match=r"small\.idx: holds a uint8 array of shape \(2, 27, 28\)"):
        load_idx_images(path)


def test_labels_loader_rejects_an_images_file_and_out_of_range_labels(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match=r"expected uint8 labels of shape \(N,\)"):
        load_idx_labels(SAMPLE / "t10k-images-idx3-ubyte.gz")
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(np.array([3, 10, 4, 12], np.uint8)))
    with pytest.raises(IdxFormatError, match=r"2 labels are outside 0-9, the first is 10 at index 1"):
        load_idx_labels(path)
    np.testing.assert_array_equal(load_idx_labels(path, num_classes=13), [3, 10, 4, 12])


# --------------------------------------------------------------------------- the real sample


def test_sample_test_split_has_known_shapes_and_labels() -> None:
    images = load_idx_images(SAMPLE / "t10k-images-idx3-ubyte.gz")
    labels = load_idx_labels(SAMPLE / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1000,) and labels.dtype == np.uint8
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert images.max() == 255 and images[0, 0, 0] == 0  # real digits: white ink on black


def test_load_split_reads_the_sample_unverified() -> None:
    images, labels = load_split("mnist", "train", SAMPLE, verify=False, download_missing=False)
    assert images.shape == (2000, 28, 28) and labels.shape == (2000,)
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_load_split_with_verification_rejects_the_sample_as_not_official() -> None:
    with pytest.raises(ChecksumError) as info:
        load_split("mnist", "test", SAMPLE, download_missing=False)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert DATASETS["mnist"].checksums["t10k-images-idx3-ubyte.gz"] in message
    assert "a valid IDX file of 1,000 images, but not the official mnist file" in message
    assert "add --no-verify" in message


def test_load_split_only_needs_the_files_of_its_split(tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((SAMPLE / name).read_bytes())
    images, labels = load_split("mnist", "test", tmp_path, verify=False, download_missing=False)
    assert len(images) == len(labels) == 1000


def test_load_split_reports_image_and_label_counts_that_disagree(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(DataError) as info:
        load_split("mnist", "train", tmp_path, verify=False, download_missing=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz holds 3 images" in message
    assert "train-labels-idx1-ubyte.gz holds 2 labels" in message


def test_load_split_rejects_unknown_split_and_data_set() -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_split("mnist", "val", SAMPLE)
    with pytest.raises(ValueError, match="unknown data set 'emnist'; choose one of: mnist, fashion-mnist"):
        load_split("emnist", "train", SAMPLE)


def test_fetch_without_download_names_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
        (SAMPLE / "train-images-idx3-ubyte.gz").read_bytes()
    )
    with pytest.raises(DataError) as info:
        fetch("mnist", tmp_path, verify=False, download_missing=False)
    message = str(info.value)
    assert "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path) in message and "by hand" in message


# --------------------------------------------------------------------------- specs, checksums, cache dir


def test_dataset_specs() -> None:
    mnist, fashion = DATASETS["mnist"], DATASETS["fashion-mnist"]
    assert mnist.class_names == tuple("0123456789")
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[-1] == "Ankle boot"
    assert (mnist.mean, mnist.std, fashion.mean, fashion.std) == (0.1307, 0.3081, 0.2860, 0.3530)
    for spec in (mnist, fashion):
        assert set(spec.files.values()) == set(MNIST_FILES)
        assert set(spec.checksums) == set(MNIST_FILES)
    assert mnist.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert fashion.checksums["train-images-idx3-ubyte.gz"] == "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d"


def test_a_spec_with_a_malformed_checksum_is_refused() -> None:
    with pytest.raises(ValueError, match="is not 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'"):
        download.DatasetSpec(
            name="bad",
            files=dict(DATASETS["mnist"].files),
            checksums={"train-images-idx3-ubyte.gz": "sha256:1234"},
            mirrors=(),
            class_names=("a",),
            mean=0.5,
            std=0.5,
        )


def test_file_digest_and_verify_checksum_agree_with_hashlib() -> None:
    path = SAMPLE / "t10k-labels-idx1-ubyte.gz"
    data = path.read_bytes()
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    assert file_digest(path) == sha
    assert file_digest(path, "md5") == md5
    assert verify_checksum(path, f"sha256:{sha}")
    assert verify_checksum(path, f"md5:{md5.upper()}")
    assert not verify_checksum(path, "md5:" + "0" * 32)
    with pytest.raises(ValueError, match="'crc32:1234' is not 'sha256:<64 hex digits>'"):
        verify_checksum(path, "crc32:1234")


def test_files_digest_hashes_the_files_in_order() -> None:
    first, second = SAMPLE / "train-labels-idx1-ubyte.gz", SAMPLE / "t10k-labels-idx1-ubyte.gz"
    expected = hashlib.sha256(first.read_bytes() + second.read_bytes()).hexdigest()
    assert files_digest([first, second]) == f"sha256:{expected}"
    assert files_digest([second, first]) != files_digest([first, second])


def test_default_data_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "explicit"
    monkeypatch.delenv("DIGITS_DATA_DIR")
    assert default_data_dir() == tmp_path / "xdg" / "digits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "digits"


def test_fetch_without_data_dir_uses_a_folder_per_data_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path))
    cache = tmp_path / "mnist"
    cache.mkdir()
    for name in MNIST_FILES:
        (cache / name).write_bytes((SAMPLE / name).read_bytes())
    paths = fetch("mnist", verify=False, download_missing=False)
    assert paths == {
        "train_images": cache / "train-images-idx3-ubyte.gz",
        "train_labels": cache / "train-labels-idx1-ubyte.gz",
        "test_images": cache / "t10k-images-idx3-ubyte.gz",
        "test_labels": cache / "t10k-labels-idx1-ubyte.gz",
    }


# --------------------------------------------------------------------------- stratified_split


def test_stratified_split_is_deterministic_disjoint_and_covering() -> None:
    labels = load_idx_labels(SAMPLE / "train-labels-idx1-ubyte.gz")
    train_idx, val_idx = stratified_split(labels, 0.1, seed=0)
    again_train, again_val = stratified_split(labels, 0.1, seed=0)
    np.testing.assert_array_equal(train_idx, again_train)
    np.testing.assert_array_equal(val_idx, again_val)
    assert train_idx.dtype == val_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)  # sorted, no repeats
    assert np.intersect1d(train_idx, val_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), np.arange(len(labels)))
    _, other_val = stratified_split(labels, 0.1, seed=1)
    assert not np.array_equal(val_idx, other_val)


def test_stratified_split_takes_the_rounded_fraction_of_each_class() -> None:
    labels = np.repeat(np.arange(4), [10, 25, 3, 1])
    _, val_idx = stratified_split(labels, 0.3, seed=7)
    counts = np.bincount(labels[val_idx], minlength=4)
    assert counts.tolist() == [round(0.3 * 10), round(0.3 * 25), round(0.3 * 3), round(0.3 * 1)]


def test_stratified_split_per_class_proportions_on_real_labels() -> None:
    labels = load_idx_labels(SAMPLE / "train-labels-idx1-ubyte.gz")
    _, val_idx = stratified_split(labels, 0.2, seed=3)
    class_counts = np.bincount(labels, minlength=10)
    np.testing.assert_array_equal(
        np.bincount(labels[val_idx], minlength=10), [round(0.2 * c) for c in class_counts]
    )


def test_stratified_split_edges_and_validation() -> None:
    labels = np.array([0, 1, 1, 2])
    train_idx, val_idx = stratified_split(labels, 0.0, seed=0)
    assert train_idx.tolist() == [0, 1, 2, 3] and val_idx.tolist() == []
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
            stratified_split(labels, bad, seed=0)


# --------------------------------------------------------------------------- the full data (CI)


@pytest.mark.full_data
def test_full_mnist_matches_the_published_checksums_and_counts(full_mnist_dir: Path) -> None:
    paths = fetch("mnist", full_mnist_dir, download_missing=False)  # verifies the SHA-256 sums in the spec
    assert sorted(p.name for p in paths.values()) == sorted(MNIST_FILES)
    for name, md5 in [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]:
        assert verify_checksum(full_mnist_dir / name, f"md5:{md5}")  # torchvision's MD5s
    images, labels = load_split("mnist", "train", full_mnist_dir, download_missing=False)
    assert images.shape == (60000, 28, 28)
    assert np.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # Exact pixel statistics from a histogram (no float copy of 47 M pixels).
    counts = np.bincount(images.reshape(-1), minlength=256)
    scale = np.arange(256) / 255
    mean = (counts * scale).sum() / counts.sum()
    std = np.sqrt((counts * (scale - mean) ** 2).sum() / counts.sum())
    assert (round(mean, 4), round(std, 4)) == (DATASETS["mnist"].mean, DATASETS["mnist"].std)
    test_images, test_labels = load_split("mnist", "test", full_mnist_dir, download_missing=False)
    assert np.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The shipped sample is a byte-exact prefix of the real data.
    sample_images, sample_labels = load_split("mnist", "test", SAMPLE, verify=False, download_missing=False)
    np.testing.assert_array_equal(sample_images, test_images[:1000])
    np.testing.assert_array_equal(sample_labels, test_labels[:1000])
