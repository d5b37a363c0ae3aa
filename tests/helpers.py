"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray, mode: str = "L") -> bytes:
    """Encode a uint8 array (L, RGB or RGBA) as PNG."""
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8), mode=mode).save(buf, "PNG")
    return buf.getvalue()


def shipped_version(name: str) -> str:
    """The version of a shipped model, as models/manifest.json records it."""
    import json
    from pathlib import Path

    manifest = json.loads((Path(__file__).resolve().parents[1] / "models" / "manifest.json").read_text())
    return str(next(m["version"] for m in manifest["models"] if m["name"] == name))
