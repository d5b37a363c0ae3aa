"""libspng's PNG decoder called through its C API, with the interpreter released while it decodes.

pyspng ships libspng inside its extension module and decodes through a binding that holds the
interpreter (the GIL) for the whole decode, and first copies the file into a C++ string. The
same library's own functions, exported by that module, are called here through ctypes: the
file is read where it lies, and while libspng decodes, the event loop (or another decoding
thread) runs Python. The pixels are libspng's, with pyspng's settings (chunk CRCs not
checked, 64 MiB chunk limits), so they are bit for bit what `pyspng.load` returns.

`load` returns None wherever it cannot decode (no pyspng, a build without these symbols, a
file libspng refuses): the caller then decodes with pyspng or Pillow, which name what is wrong.
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["available", "load"]

# spng.h (libspng 0.7): output formats, context flags, CRC actions.
_FORMATS = {"RGBA": (1, 4), "RGB": (4, 3), "L": (64, 1)}  # mode -> (spng_format, channels)
_CRC_USE = 2  # chunk CRCs and the deflate stream's checksum not computed (pyspng's setting)
_CHUNK_LIMIT = 64 * 1024 * 1024  # bytes of a chunk and of all chunks kept (pyspng's setting)


def _bind() -> tuple[ctypes.CDLL, ctypes.PyDLL] | None:
    """libspng's functions from pyspng's extension module: the decode itself through CDLL (ctypes
    releases the interpreter for the call), the short set-up calls through PyDLL (it keeps it:
    handing it over and winning it back would cost more than those calls)."""
    try:
        from pyspng import _pyspng_c
    except ImportError:
        return None
    path = _pyspng_c.__file__
    try:
        released, held = ctypes.CDLL(path), ctypes.PyDLL(path)
        released.spng_decode_image.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                               ctypes.c_int]
        released.spng_decode_image.restype = ctypes.c_int
        held.spng_ctx_new.argtypes = [ctypes.c_int]
        held.spng_ctx_new.restype = ctypes.c_void_p
        held.spng_ctx_free.argtypes = [ctypes.c_void_p]
        held.spng_ctx_free.restype = None
        held.spng_set_crc_action.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        held.spng_set_chunk_limits.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        held.spng_set_png_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        held.spng_decoded_image_size.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_size_t)]
        for name in ("spng_set_crc_action", "spng_set_chunk_limits", "spng_set_png_buffer",
                     "spng_decoded_image_size"):
            getattr(held, name).restype = ctypes.c_int
    except (OSError, AttributeError) as exc:  # another build of pyspng: its own binding decodes
        log.debug("libspng's C API is not reachable through pyspng (%s); PNGs decode through pyspng", exc)
        return None
    return released, held


_LIB = _bind()


def available() -> bool:
    """Whether `load` can decode (pyspng installed, with libspng's functions exported)."""
    return _LIB is not None


def load(data: bytes, mode: str, width: int, height: int) -> np.ndarray | None:
    """uint8 [height,width,channels] ([height,width] for "L") pixels of the PNG `data` in `mode`
    ("L" from a grey PNG, "RGB" or "RGBA" from any 8-bit one), whose header declares `width` x
    `height`; None where libspng refuses it or is not available."""
    if _LIB is None:
        return None
    released, held = _LIB
    spng_format, channels = _FORMATS[mode]
    ctx = held.spng_ctx_new(0)
    if not ctx:
        return None
    try:
        held.spng_set_crc_action(ctx, _CRC_USE, _CRC_USE)
        held.spng_set_chunk_limits(ctx, _CHUNK_LIMIT, _CHUNK_LIMIT)
        if held.spng_set_png_buffer(ctx, data, len(data)):
            return None
        size = ctypes.c_size_t()
        if held.spng_decoded_image_size(ctx, spng_format, ctypes.byref(size)):
            return None
        if size.value != width * height * channels:  # not the size the caller read from the header
            return None
        pixels = np.empty((height, width, channels) if channels > 1 else (height, width), np.uint8)
        if released.spng_decode_image(ctx, pixels.ctypes.data, size.value, spng_format, 0):
            return None
        return pixels
    finally:
        held.spng_ctx_free(ctx)
