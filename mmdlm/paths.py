"""Where the library keeps what it derives once and reuses (the reference LM, the digits)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$MMDLM_CACHE_DIR`, else `~/.cache/mmdlm`.

    The services read the same variable (`Settings.cache_dir`, staged artifacts under `artifacts/`), so a
    deployment that sets it gets one cache volume; the library only writes its own subfolders
    (`reference/`, `digits/`), which never collide with `artifacts/`.
    """
    return Path(os.environ.get("MMDLM_CACHE_DIR") or Path.home() / ".cache" / "mmdlm")
