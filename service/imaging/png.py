"""The PNG container, read without decoding it: the header (IHDR) and the image data (IDAT).

    png_header        what the IHDR declares, from the first 33 bytes (sizes are checked before
                      any pixel is decoded)
    with_stored_data  the same file with its image data inflated by ISA-L and stored uncompressed,
                      for libspng to decode

A drawing pad's PNG is mostly inflating: on a 280x280 canvas, zlib's inflate is nine tenths of
libspng's decoding, and ISA-L inflates the same stream about four times as fast. Re-stored in
uncompressed deflate blocks, the image data leaves libspng only a copy and the unfiltering, so
the pixels are libspng's own, bit for bit, at 0.7-0.8 of its cost on a 280x280 canvas
(bench/bench_imaging.py, bench/RESULTS.md).
"""

from __future__ import annotations

import struct
import types
import zlib
from dataclasses import dataclass
from typing import cast

isal_zlib: types.ModuleType | None
try:  # ISA-L's inflate, 3-4x zlib's on the same stream
    from isal import isal_zlib
    from isal.isal_zlib import error as _isal_error

    # isal's stubs declare its error as an instance; at run time it is the exception class.
    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (cast("type[BaseException]", _isal_error),)
except ImportError:  # an install without it lets libspng inflate
    isal_zlib = None
    _INFLATE_ERRORS = ()

__all__ = ["PngHeader", "png_header", "png_pixels", "with_stored_data"]


@dataclass(frozen=True, slots=True)
class PngHeader:
    """What a PNG's IHDR chunk declares (PNG specification, section 11.2.2)."""

    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 grey, 2 RGB, 3 palette, 4 grey and alpha, 6 RGBA
    interlace: int  # 0 none, 1 Adam7


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# length (13), type, width, height, bit depth, colour type, compression, filter, interlace, CRC
_IHDR = struct.Struct(">I4sIIBBBBBI")
_IHDR_END = len(_PNG_SIGNATURE) + _IHDR.size  # 33 bytes
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each colour type
# Adam7's seven passes: first column and row, column and row steps
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_U32 = struct.Struct(">I")
_IDAT_CRC = zlib.crc32(b"IDAT")  # a chunk's CRC covers its type, then its data
_STORED_BLOCK = 65535  # the most bytes a stored deflate block holds
_STORED_HEADER = struct.Struct("<BHH")  # BFINAL + BTYPE 00, LEN, NLEN
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary (31 divides 0x7801)
# Below this much image data the chunk walk costs more than ISA-L saves (bench/bench_imaging.py,
# RGBA canvases: 64x64 (16 KiB) 1.02x libspng's own decoding, 100x100 (40 KiB) 0.78x, 280x280 0.5-0.6x).
STORE_FROM_BYTES = 32 * 1024
# Above this, the two transient copies of the image data (inflated, then stored) would cost a large
# upload more memory than its pixels: up to 1448x1448 RGBA, which covers every drawing pad.
STORE_UP_TO_BYTES = 8 * 1024 * 1024


def png_header(data: bytes) -> PngHeader | None:
    """The header of a PNG, read from its first 33 bytes: a few microseconds, where Pillow's
    Image.open costs tens (it parses every chunk up to the pixels). None when `data` does not
    start with a well-formed IHDR (wrong signature, length or CRC, a truncated file): Pillow
    then reads it, and names what is wrong."""
    if len(data) < _IHDR_END or not data.startswith(_PNG_SIGNATURE):
        return None
    length, kind, width, height, depth, colour, compression, filtering, interlace, crc = _IHDR.unpack_from(
        data, len(_PNG_SIGNATURE)
    )
    if length != 13 or kind != b"IHDR" or zlib.crc32(data[12:29]) != crc:
        return None
    if compression or filtering or interlace > 1:
        return None
    return PngHeader(width, height, depth, colour, interlace)


def png_pixels(data: bytes) -> int | None:
    """The pixel count a PNG's header declares (width x height), read from its first 33 bytes
    without decoding anything; None for anything that is not a well-formed PNG."""
    header = png_header(data)
    return None if header is None else header.width * header.height


def _image_data_size(header: PngHeader) -> int:
    """The bytes the image data inflates to: each row's filter byte and its samples, rows padded to
    whole bytes (PNG specification, 7.2), over the seven passes of an interlaced image (8.2)."""
    bits = _CHANNELS.get(header.colour_type, 4) * header.bit_depth

    def rows(width: int, height: int) -> int:
        return height * (1 + (width * bits + 7) // 8) if width > 0 and height > 0 else 0

    if not header.interlace:
        return rows(header.width, header.height)
    return sum(rows(-(-(header.width - x0) // dx), -(-(header.height - y0) // dy)) for x0, y0, dx, dy in _ADAM7)


def with_stored_data(data: bytes, header: PngHeader) -> bytes | None:
    """`data` with its IDAT chunks replaced by one holding the same image data inflated by ISA-L
    and stored uncompressed: the same pixels for any decoder, and nothing left for it to inflate.

    None (decode `data` itself, which names what is wrong) where the image data is smaller than
    STORE_FROM_BYTES or larger than STORE_UP_TO_BYTES, and where anything is amiss: no ISA-L,
    no image data, IDAT chunks not in one run, a chunk that runs past the end of the file or
    fails its CRC, a stream ISA-L refuses (its Adler-32 checksum included) or one that inflates
    to another size than `header` declares (a decompression bomb is never inflated further), or
    that data follows."""
    size = _image_data_size(header)
    if isal_zlib is None or not STORE_FROM_BYTES <= size <= STORE_UP_TO_BYTES:
        return None
    pieces: list[bytes] = []
    first = end = -1
    position = _IHDR_END
    while position + 12 <= len(data):
        (length,) = _U32.unpack_from(data, position)
        kind = data[position + 4 : position + 8]
        chunk_end = position + 12 + length
        if chunk_end > len(data):
            return None
        if kind == b"IDAT":
            if first < 0:
                first = position
            elif end != position:  # image data split by another chunk: not a valid PNG
                return None
            piece = data[position + 8 : position + 8 + length]
            if isal_zlib.crc32(piece, _IDAT_CRC) != _U32.unpack_from(data, position + 8 + length)[0]:
                return None
            pieces.append(piece)
            end = chunk_end
        elif kind == b"IEND" or first >= 0:
            break  # nothing after the image data changes it; the rest is copied as it is
        position = chunk_end
    if first < 0:
        return None
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(pieces[0] if len(pieces) == 1 else b"".join(pieces), size + 1)
    except _INFLATE_ERRORS:
        return None
    if not inflater.eof or inflater.unused_data or len(raw) != size:
        return None  # cut short, followed by other data, or not the image's size
    view = memoryview(raw)
    stream: list[bytes | memoryview] = [_ZLIB_HEADER]
    for start in range(0, len(raw), _STORED_BLOCK):
        block = view[start : start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= len(raw)
        stream += [_STORED_HEADER.pack(final, len(block), len(block) ^ 0xFFFF), block]
    stream.append(_U32.pack(isal_zlib.adler32(raw)))
    crc = _IDAT_CRC
    for part in stream:
        crc = isal_zlib.crc32(part, crc)
    length = sum(len(part) for part in stream)
    return b"".join([data[:first], _U32.pack(length), b"IDAT", *stream, _U32.pack(crc), data[end:]])
