"""Images in and out of the sampler: base64 PNGs of generated images (through `mmdlm.data.png`) and the
uploaded image of an i2t request, decoded defensively.

An uploaded image is untrusted bytes: its base64 text and decoded size are bounded before Pillow sees it,
its declared width x height is checked from the header before any pixel is decompressed (a small PNG can
declare a huge canvas: a decompression bomb), and anything Pillow cannot read is a 422 naming the field,
never a 500. The image is then made the model's shape the way `prepare-images` makes a dataset's:
converted to grey or RGB, the shorter side resized to the model's size and the centre cropped.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

import numpy as np

from services.sampler.schemas import RequestError

DATA_URL_PREFIX = "data:image/png;base64,"


def png_base64(image: Any, scale: int = 1) -> str:
    """One generated (C, S, S) image (float in [-1, 1]) as base64 PNG text."""
    from mmdlm.data.png import png_bytes

    return base64.b64encode(png_bytes(image, scale=scale)).decode("ascii")


def decode_upload(
    field: str, text: str, *, max_bytes: int, max_pixels: int, size: int, channels: int
) -> np.ndarray:
    """Base64 PNG -> (channels, size, size) float32 in [-1, 1]; RequestError (422 naming `field`) when the
    text is not base64, not a PNG, larger than `max_bytes` / `max_pixels`, or unreadable."""
    from PIL import Image

    if text.startswith(DATA_URL_PREFIX):
        text = text[len(DATA_URL_PREFIX) :]
    if len(text) > 4 * (-(-max_bytes // 3)) + 4:
        raise RequestError(field, f"more than {max_bytes} bytes once decoded (MMDLM_SAMPLER_MAX_IMAGE_BYTES)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64 (send the PNG file's bytes, base64-encoded)") from None
    if len(data) > max_bytes:
        raise RequestError(
            field, f"{len(data)} bytes exceed the limit of {max_bytes} (MMDLM_SAMPLER_MAX_IMAGE_BYTES)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                width, height = img.size  # from the header: nothing decompressed yet
                if width < 1 or height < 1:
                    raise RequestError(field, f"has an empty canvas ({width}x{height})")
                if width * height > max_pixels:
                    raise RequestError(
                        field,
                        f"declares {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
                        "(MMDLM_SAMPLER_MAX_IMAGE_PIXELS)",
                    )
                img.load()
                converted = img.convert("L" if channels == 1 else "RGB")
    except RequestError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own header check
        raise RequestError(
            field, f"declares more pixels than the limit of {max_pixels} (MMDLM_SAMPLER_MAX_IMAGE_PIXELS)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RequestError(field, f"is not a readable PNG image ({type(exc).__name__}: {exc})") from None
    array = _fit(converted, size)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if array.shape[0] != channels:
        raise RequestError(field, f"has {array.shape[0]} channels, the model reads {channels}")
    return (array.astype(np.float32) / 255.0 * 2.0 - 1.0).astype(np.float32)


def _fit(img: Any, size: int) -> np.ndarray:
    """Shorter side resized to `size` (bilinear, box-filtered when shrinking), then the centre cropped."""
    from PIL import Image

    width, height = img.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)
