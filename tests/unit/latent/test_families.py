"""Latent families through their hooks and the model folder: data checks before training, statistics
binding, save -> load -> same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmdlm.config.latent import LatentSampleConfig, MMDiTConfig, MMDiTSpec
from mmdlm.families import get_family, names
from mmdlm.pipeline import load_pretrained, save_model_folder


def spec_for(dim: int = 384) -> MMDiTSpec:
    return MMDiTSpec(
        model=MMDiTConfig(hidden_size=32, n_blocks=1, n_heads=2, cond_dim=32, max_seq_len=16, latent_dim=dim)
    )


def test_registered() -> None:
    assert {"mmdit", "latent-dit", "cross-dit"} <= set(names())


def test_open_dataset_refuses_mismatch_before_build(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    family = get_family("mmdit")
    with pytest.raises(
        ValueError, match=r"model\.latent_dim=1024 does not match .* dimension 384 \(encoder 'minilm'"
    ):
        family.open_dataset(spec_for(1024), out)
    with pytest.raises(ValueError, match="token dataset; build one with `mmdlm encode"):
        family.open_dataset(spec_for(), out / "source")
    wrong = spec_for()
    wrong.encoder = {"name": "e5"}
    with pytest.raises(ValueError, match="encoded with 'minilm'"):
        family.open_dataset(wrong, out)


def test_bind_loads_stats_lengths_and_encoder(latent_dataset: tuple[Path, Path]) -> None:
    _, out = latent_dataset
    family = get_family("mmdit")
    spec = spec_for()
    data = family.open_dataset(spec, out)
    built = family.build(spec, data.vocab)
    family.bind_dataset(built, data)
    mean, std = data.stats()
    torch.testing.assert_close(built.model.latent_norm.mean, torch.from_numpy(mean))
    assert bool(built.model.latent_norm.fitted)
    assert int(built.model.length_counts.sum()) == len(data.split("train"))
    assert spec.encoder is not None and spec.encoder.name == "minilm" and spec.encoder.model is None


def test_model_folder_round_trip(latent_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = latent_dataset
    family = get_family("mmdit")
    spec = spec_for()
    data = family.open_dataset(spec, out)
    torch.manual_seed(0)
    built = family.build(spec, data.vocab)
    family.bind_dataset(built, data)
    with torch.no_grad():
        for p in built.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = save_model_folder(
        tmp_path / "model",
        spec=spec,
        vocab=data.vocab,
        state_dict=built.model.state_dict(),
        tokenizer_dir=out / "tokenizer",
        extras=built.extras,
    )
    pipe = load_pretrained(folder)
    assert pipe.spec.encoder.name == "minilm"
    batch = data.split("validation").get_batch(range(2))
    cfg = LatentSampleConfig(mode="t2l", latent_steps=4, seed=3)
    kwargs = {
        "text_ids": torch.from_numpy(batch["input_ids"]),
        "text_mask": torch.from_numpy(batch["attention_mask"]),
    }
    a = family.generate(built, cfg, **kwargs)
    b = family.generate(pipe.built, cfg, **kwargs)
    torch.testing.assert_close(a.latents, b.latents)
    generated = pipe.generate()  # the generic Pipeline path: SampleConfig -> joint samples for mmdit
    assert len(generated.texts) == 8
