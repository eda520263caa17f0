"""Image MMDiT on the captioned sklearn digits (spec §6): data, network shapes, objective, samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmdlm.config.latent import ImageMMDiTSpec, LatentSampleConfig
from mmdlm.data.images import DIGITS, DigitsDataset
from mmdlm.families import get_family
from mmdlm.models.image_mmdit import patchify, unpatchify
from mmdlm.pipeline import load_pretrained, save_model_folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsDataset:
    return DigitsDataset.open("sklearn:digits", root=tmp_path_factory.mktemp("digits"))


def spec(variant: str) -> ImageMMDiTSpec:
    return ImageMMDiTSpec(
        model={"variant": variant, "hidden_size": 32, "n_blocks": 1, "n_heads": 2, "cond_dim": 32}
    )


def test_digits_split_by_image_and_captions(digits: DigitsDataset) -> None:
    train, val = digits.split("train"), digits.split("validation")
    assert len(train) + len(val) == 1797 and 170 <= len(val) <= 190
    assert not set(train.index) & set(val.index)
    batch = val.get_batch(range(8))
    assert batch["image"].shape == (8, 1, 8, 8) and batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["pixels"].shape == (8, 64) and batch["pixels"].max() <= 16
    texts = digits.tokenizer().batch_decode(batch["input_ids"].tolist(), skip_special_tokens=True)
    for text, label in zip(texts, batch["label"], strict=True):
        assert DIGITS[label] in text.split()
    with pytest.raises(ValueError, match="sklearn:digits"):
        DigitsDataset.open("mnist")


def test_patchify_round_trip() -> None:
    image = torch.randn(3, 1, 8, 8)
    patches = patchify(image, 2)
    assert patches.shape == (3, 16, 4)
    torch.testing.assert_close(unpatchify(patches, 2, 1, 8), image)


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_objective_trains_every_parameter(variant: str, digits: DigitsDataset) -> None:
    family = get_family("image-mmdit")
    built = family.build(spec(variant), digits.vocab)
    family.bind_dataset(built, digits)
    batch = {k: torch.from_numpy(v) for k, v in digits.split("train").get_batch(range(12)).items()}
    built.objective.set_step(0)
    out = built.objective(built.model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and {"text_loss", "image_loss"} <= set(out.metrics)
    out.loss.backward()
    assert all(p.grad is not None for p in built.model.parameters())
    nll, counts = built.objective.nll_bound(built.model, batch, 2)
    assert nll.shape == (12,) and torch.equal(counts, batch["attention_mask"].sum(1))


@pytest.mark.parametrize("variant", ["continuous", "discrete"])
def test_generate_every_mode(variant: str, digits: DigitsDataset, tmp_path: Path) -> None:
    family = get_family("image-mmdit")
    built = family.build(spec(variant), digits.vocab)
    family.bind_dataset(built, digits)
    val = digits.split("validation").get_batch(range(3))
    ids, mask = torch.from_numpy(val["input_ids"]), torch.from_numpy(val["attention_mask"])
    cfg = LatentSampleConfig(text_steps=3, latent_steps=3, guidance_scale=2.0)
    images = family.generate(built, cfg.model_copy(update={"mode": "t2l"}), text_ids=ids, text_mask=mask)
    assert images.latents.shape == (3, 1, 8, 8) and images.latents.abs().max() <= 1
    key = "image" if variant == "continuous" else "pixels"
    captions = family.generate(
        built, cfg.model_copy(update={"mode": "l2t"}), images=torch.from_numpy(val[key])
    )
    assert captions.tokens.shape == (3, 8) and not (captions.tokens == digits.vocab.mask_id).any()
    blind = family.generate(
        built, cfg.model_copy(update={"mode": "l2t"}), images=torch.from_numpy(val[key]), unconditional=True
    )
    assert blind.tokens.shape == (3, 8)
    joint = family.generate(built, cfg.model_copy(update={"mode": "joint", "num_samples": 2}))
    assert joint.tokens.shape == (2, 8) and joint.latents.shape == (2, 1, 8, 8)
    folder = save_model_folder(
        tmp_path / "m", spec=built.extras["spec"], vocab=digits.vocab, state_dict=built.model.state_dict(),
        tokenizer_dir=digits.root / "tokenizer", extras=built.extras,
    )  # fmt: skip
    pipe = load_pretrained(folder)
    again = family.generate(pipe.built, cfg.model_copy(update={"mode": "t2l"}), text_ids=ids, text_mask=mask)
    np.testing.assert_allclose(again.latents.numpy(), images.latents.numpy(), atol=1e-5)
