"""File utilities: atomic writes and digests (the one place files are hashed)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

IO_BLOCK = 1 << 20  # 1 MiB: hashing and download block size
HASH_HEX_LENGTHS = {"sha256": 64, "md5": 32}
_HEX = re.compile(r"[0-9a-f]+")


class DataError(Exception):
    """A data file is missing, malformed or corrupt. The message names the file and what to do."""


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only once the block finishes without error.

    The data goes to a hidden temporary file in the same directory (so ``os.replace`` is an
    atomic rename); on any failure the temporary file is removed and ``path`` is untouched.
    The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    # os.open with 0o666 lets the umask decide the final permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            tmp.unlink(missing_ok=True)


def new_hash(algorithm: str) -> hashlib._Hash:
    """A hashlib object for "sha256" or "md5"."""
    if algorithm not in HASH_HEX_LENGTHS:
        raise ValueError(f"unsupported hash algorithm {algorithm!r}; use 'sha256' or 'md5'")
    # usedforsecurity=False: MD5 here is an integrity check, and FIPS builds refuse it otherwise.
    return hashlib.new(algorithm, usedforsecurity=False)


def _update(digest: hashlib._Hash, path: str | Path) -> None:
    with open(path, "rb") as source:
        while block := source.read(IO_BLOCK):
            digest.update(block)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    digest = new_hash(algorithm)
    _update(digest, path)
    return digest.hexdigest()


def files_digest(paths: Iterable[str | Path]) -> str:
    """The SHA-256 of the given files' bytes, in order, as "sha256:<hex>" (recorded in model metadata)."""
    digest = hashlib.sha256()
    for path in paths:
        _update(digest, path)
    return f"sha256:{digest.hexdigest()}"


def parse_checksum(expected: str, context: str = "checksum") -> tuple[str, str]:
    """"sha256:<hex>" or "md5:<hex>" -> (algorithm, lower-case hex digest); ValueError otherwise."""
    algorithm, sep, digest = expected.partition(":")
    algorithm, digest = algorithm.lower(), digest.lower()
    if not sep or len(digest) != HASH_HEX_LENGTHS.get(algorithm, -1) or not _HEX.fullmatch(digest):
        raise ValueError(f"{context}: {expected!r} is not 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'")
    return algorithm, digest


def verify_checksum(path: str | Path, expected: str) -> bool:
    """True when the file matches ``expected`` ("sha256:<hex>" or "md5:<hex>")."""
    algorithm, digest = parse_checksum(expected)
    return file_digest(path, algorithm) == digest
