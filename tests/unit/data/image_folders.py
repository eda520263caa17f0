"""A folder of captioned test images in mixed sizes, modes and formats, with one of each kind of bad file
(shared by the unit tests of `prepare_images` and the `prepare-images` job tests)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

BAD_FILES = ("corrupt.png", "truncated.png", "empty.png", "wide.tiff", "missing.png", "../outside.png")
COLOURS = ["red", "green", "blue", "white", "black", "grey"]


def _half_image(mode: str, size: tuple[int, int]) -> Image.Image:
    """Left half black, right half white (a centre crop keeps that boundary in the middle)."""
    w, h = size
    grey = np.zeros((h, w), dtype=np.uint8)
    grey[:, w // 2 :] = 255
    image = Image.fromarray(grey)
    return image.convert(mode) if mode != "L" else image


def write_folder(folder: Path, *, bad: bool = True) -> list[dict]:
    """Twelve good images in mixed sizes/modes/formats, plus (with `bad`) one of each kind of bad file."""
    folder.mkdir(parents=True, exist_ok=True)
    modes = ["RGB", "L", "RGBA", "P", "LA", "1", "CMYK", "RGB", "L", "RGB", "I;16", "RGB"]
    sizes = [(40, 30), (16, 64), (9, 9), (100, 20), (33, 17), (8, 8), (24, 24), (64, 48), (12, 40),
             (31, 31), (20, 20), (50, 10)]  # fmt: skip
    records = []
    for i, (mode, size) in enumerate(zip(modes, sizes, strict=True)):
        name = f"img/{i:02d}.{'jpg' if mode in ('CMYK',) else 'png'}"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if mode == "I;16":
            Image.fromarray(np.arange(400, dtype=np.uint16).reshape(20, 20) * 150).save(folder / name)
        else:
            _half_image(mode, size).save(folder / name)
        records.append(
            {"file": name, "caption": f"A {COLOURS[i % 6]} thing number {i}", "label": COLOURS[i % 3]}
        )
    if bad:
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
        good = folder / "img" / "00.png"
        (folder / "truncated.png").write_bytes(good.read_bytes()[:60])
        (folder / "empty.png").write_bytes(b"")
        Image.fromarray(np.zeros((6, 6), dtype=np.int32)).save(folder / "wide.tiff")
        records += [
            {"file": "corrupt.png", "caption": "a corrupt file"},
            {"file": "truncated.png", "caption": "a truncated file"},
            {"file": "empty.png", "caption": "an empty file"},
            {"file": "wide.tiff", "caption": "a 32-bit image"},
            {"file": "missing.png", "caption": "not there"},
            {"file": "../outside.png", "caption": "escapes the folder"},
        ]
    with open(folder / "captions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return records
