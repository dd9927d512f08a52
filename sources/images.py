"""Turning a manifest row into a decoded RGB image, or a recorded error."""

from __future__ import annotations

import io

import fsspec
import pyarrow as pa
from PIL import Image


def decode(image: bytes | None, uri: str | None) -> Image.Image:
    if image is None:
        if not uri:
            raise ValueError("row has neither image bytes nor a URI")
        with fsspec.open(uri, "rb") as f:
            image = f.read()
    with Image.open(io.BytesIO(image)) as im:
        im.load()
        return im.convert("RGB")


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
