"""YAML training presets: `<size>/<variant>.yaml` for every DiT size and the variants `mdlm`, `gidd`,
`hdlm-64`, `hdlm-64-xi0.9` and `ar`.

A preset is a complete TrainConfig except for what only the user knows: `data.dataset` (and, for HDLM,
`model.clusters`, a 64-cluster artifact from `mmdlm clusters`). GPU sizes carry the spec's reference
recipe (§8.3: AdamW 0.9/0.99, lr 5e-4, 10k warmup, cosine to 10%, batch 64 per device, bf16); the CPU sizes
(`cpu-nano`, `cpu-micro`) are short runs for tests and the demo.

    mmdlm train small/mdlm --set data.dataset=DIR
    mmdlm train path/to/my.yaml --set steps=100
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmdlm.config.base import apply_overrides, load_mapping

if TYPE_CHECKING:
    from mmdlm.config.train import TrainConfig

PRESET_DIR = Path(__file__).parent
VARIANTS = ("mdlm", "gidd", "hdlm-64", "hdlm-64-xi0.9", "ar")


def list_presets() -> list[str]:
    """Names like `small/mdlm`, sorted."""
    return sorted(p.relative_to(PRESET_DIR).with_suffix("").as_posix() for p in PRESET_DIR.glob("*/*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"no config file or preset named {name!r}; presets: {', '.join(list_presets())}"
        )
    return path


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a YAML/JSON file, or from a preset name such as `small/mdlm`, plus overrides."""
    from mmdlm.config.train import TrainConfig

    path = Path(name_or_path)
    if not path.is_file():
        path = preset_path(str(name_or_path))
    return TrainConfig.model_validate(apply_overrides(load_mapping(path), overrides or []))
