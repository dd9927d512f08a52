"""Turning a manifest row into a decoded RGB image, or a recorded error.

Every odd image a real dataset holds is either decoded faithfully or refused with a reason:
16-bit greyscale is scaled (Pillow would clip it to white), transparency is composited on white
(dropping alpha would turn transparent pixels black), CMYK is converted, and truncated files and
decompression bombs (Pillow's warning too, not only its error) are refused.
"""

from __future__ import annotations

import io
import warnings

import fsspec
import numpy as np
import pyarrow as pa
from PIL import Image

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        scale = 256 if im.mode in _SIXTEEN_BIT else max(1, int(np.asarray(im).max()) // 255 + 1)
        return Image.fromarray(
            (np.asarray(im, dtype=np.uint32) // scale).clip(0, 255).astype(np.uint8)
        ).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode(image: bytes | None, uri: str | None) -> Image.Image:
    if image is None:
        if not uri:
            raise ValueError("row has neither image bytes nor a URI")
        with fsspec.open(uri, "rb") as f:
            image = f.read()
    if not image:
        raise ValueError("empty image (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            return to_rgb(im)


def decode_manifest(manifest: pa.Table) -> tuple[list[Image.Image | None], list[str | None]]:
    """One image (or None) and one error (or None) per row: a bad image never fails its shard."""
    images: list[Image.Image | None] = []
    errors: list[str | None] = []
    for data, uri in zip(
        manifest.column("image").to_pylist(), manifest.column("uri").to_pylist(), strict=True
    ):
        try:
            images.append(decode(data, uri))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any decode failure is recorded, not raised
            images.append(None)
            errors.append(f"decode: {type(exc).__name__}: {exc}"[:500])
    return images, errors
