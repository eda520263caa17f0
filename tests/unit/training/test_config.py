"""TrainConfig and its presets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmdlm.config.model import DIT_PRESETS
from mmdlm.config.presets import VARIANTS, list_presets, load_train_config


def test_every_variant_exists_for_every_size_and_validates() -> None:
    """Spec bug 6: the original defaulted to config names that did not exist; every preset here loads."""
    assert set(list_presets()) == {f"{size}/{v}" for size in DIT_PRESETS for v in VARIANTS}
    for name in list_presets():
        cfg = load_train_config(name, ["data.dataset=/data", "model.clusters=/clusters"] if "hdlm" in name else
                                ["data.dataset=/data"])  # fmt: skip
        size = name.split("/")[0]
        assert cfg.model.model.hidden_size == DIT_PRESETS[size]["hidden_size"]
        assert cfg.model.model.n_blocks == DIT_PRESETS[size]["n_blocks"]
        if not size.startswith("cpu"):  # spec §8.3 reference recipe
            assert cfg.optimizer.lr == 5e-4 and cfg.optimizer.betas == (0.9, 0.99)
            assert cfg.schedule.warmup_steps == 10_000 and cfg.schedule.min_lr_ratio == 0.1
            assert cfg.data.batch_size == 64 and cfg.precision == "bf16"
    xi = load_train_config("small/hdlm-64-xi0.9", ["data.dataset=/d", "model.clusters=/c"])
    assert xi.model.process.xi == 0.9 and xi.model.process.objective == "approximate"


def test_unknown_keys_are_errors() -> None:
    """Spec bug 8 came from a `freeze_embeddings` path that could not work; unknown keys never pass silently."""
    with pytest.raises(ValidationError, match="freeze_embeddings"):
        load_train_config("cpu-nano/mdlm", ["data.dataset=/d", "model.freeze_embeddings=true"])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        load_train_config("cpu-nano/ar", ["data.dataset=/d", "optimizer.momentum=0.9"])


def test_resume_none_spellings() -> None:
    assert load_train_config("cpu-nano/ar", ["data.dataset=/d", "resume=none"]).resume is None
    assert load_train_config("cpu-nano/ar", ["data.dataset=/d"]).resume == "auto"
