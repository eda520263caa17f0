"""Images <-> PNG for generated samples: one image, or a grid of many (sample jobs, /v1/generate, bench).

Images come as (N, C, S, S) with C = 1 (grey) or 3 (RGB), either floats in [-1, 1] (what the image MMDiT
generates) or uint8 0..255 (what an `image-dataset` stores). Only numpy and Pillow are needed, so the
services can import this without torch.

    save_png_grid(images, "grid.png", nrow=8)      # -> Path
    png_grid_bytes(images, nrow=8)                 # -> bytes of one PNG
    png_bytes(images[0])                           # -> bytes of one PNG, one (C, S, S) image
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np


def to_uint8(images: Any) -> np.ndarray:
    """(N, C, S, S) or (C, S, S) floats in [-1, 1] (clipped) or uint8 -> uint8 of the same shape.

    Floats map x -> round((x + 1) / 2 * 255), so -1 is black, 1 is white, and a uint8 image converted to
    [-1, 1] by x = u / 255 * 2 - 1 comes back unchanged."""
    if hasattr(images, "detach"):  # a torch tensor, without importing torch
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be float in [-1, 1] or uint8, got dtype {array.dtype}")
    array = np.nan_to_num(array.astype(np.float32), nan=0.0)
    return np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _check(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, S, S) or (C, S, S) with C in (1, 3), got {array.shape}")
    if array.shape[0] < 1:
        raise ValueError("no images to write")
    return array


def grid_array(
    images: Any, nrow: int = 8, padding: int = 1, scale: int = 1, pad_value: int = 0
) -> np.ndarray:
    """Tile N images row-major, `nrow` per row, with `padding` pixels between and around them, each
    pixel repeated `scale` x `scale` (nearest: tiny images stay crisp). (H, W) or (H, W, 3) uint8."""
    if nrow < 1 or padding < 0 or scale < 1:
        raise ValueError(f"nrow >= 1, padding >= 0, scale >= 1 required, got {nrow}, {padding}, {scale}")
    array = _check(to_uint8(images))
    N, C, H, W = array.shape
    if scale > 1:
        array = array.repeat(scale, axis=2).repeat(scale, axis=3)
        H, W = H * scale, W * scale
    cols = min(nrow, N)
    rows = -(-N // cols)
    out = np.full((C, rows * (H + padding) + padding, cols * (W + padding) + padding), pad_value, np.uint8)
    for i in range(N):
        r, c = divmod(i, cols)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        out[:, y : y + H, x : x + W] = array[i]
    return out[0] if C == 1 else out.transpose(1, 2, 0)


def _encode(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def png_grid_bytes(images: Any, nrow: int = 8, padding: int = 1, scale: int = 1) -> bytes:
    """One PNG (bytes) of the grid `grid_array` builds."""
    return _encode(grid_array(images, nrow, padding, scale))


def png_bytes(image: Any, scale: int = 1) -> bytes:
    """One (C, S, S) (or (1, C, S, S)) image as PNG bytes, no border."""
    array = _check(to_uint8(image))
    if array.shape[0] != 1:
        raise ValueError(f"png_bytes takes one image, got {array.shape[0]}; use png_grid_bytes")
    return _encode(grid_array(array, 1, 0, scale))


def save_png_grid(images: Any, path: str | Path, nrow: int = 8, padding: int = 1, scale: int = 1) -> Path:
    """Write the grid of `images` ((N, C, S, S) float [-1, 1] or uint8) to `path` as a PNG; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_grid_bytes(images, nrow, padding, scale))
    return path


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (C, H, W) uint8 (C = 1 for L, 3 for RGB), for round-trip checks."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("L" if img.mode in ("L", "1", "I", "I;16") else "RGB"))
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
